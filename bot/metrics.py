"""Prometheus metrics: what a team watches on election night.

Counters use the contract's reason codes and statuses as label values, so a dashboard, the
API and the logs all speak the same words.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "consentgate_messages_total", "Outbound messages by channel and final status",
            ["channel", "status"], registry=self.registry)
        self.gate_refusals = Counter(
            "consentgate_gate_refusals_total", "Messages the consent gate refused, by reason",
            ["channel", "reason"], registry=self.registry)
        self.opt_outs = Counter(
            "consentgate_opt_outs_total", "Opt-outs and suppressions recorded, by method",
            ["channel", "method"], registry=self.registry)
        self.inbound = Counter(
            "consentgate_inbound_total", "Inbound events by channel and intent",
            ["channel", "intent"], registry=self.registry)
        self.send_seconds = Histogram(
            "consentgate_provider_call_seconds", "Time of one provider call",
            ["channel"], registry=self.registry)
        # A flagged reply is a promise that a person reads it: alert when the queue grows
        # or its oldest waits too long (set from the database when /metrics is read).
        self.flagged_waiting = Gauge(
            "consentgate_flagged_replies_waiting", "Flagged replies no person has resolved yet",
            ["campaign"], registry=self.registry)
        self.flagged_oldest_age = Gauge(
            "consentgate_flagged_reply_oldest_age_seconds",
            "Age of the oldest unresolved flagged reply (0 when none waits)",
            ["campaign"], registry=self.registry)
