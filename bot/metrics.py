"""Prometheus metrics: what a team watches on election night.

Counters use the contract's reason codes and statuses as label values, so a dashboard, the
API and the logs all speak the same words.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
