"""The dispatcher: claim -> pace -> gate -> one provider call -> record.

One lane per campaign and channel claims a little more than its sender can send in the next
second (bounded memory however large the queue), waits for the sender's turn and for a free
connection of its adapter (``max_concurrency``), takes the messages whose turn has come to
the gate, and hands each admitted message to its adapter at once: a permit never waits in a
queue, not even an adapter's connection pool, so the window in which an opt-out cannot stop
a message is one provider call.

Results are written in the same transaction as the next gate admission, so a busy lane
commits once per batch rather than twice; whatever no admission has carried within
:data:`RECORD_DELAY` (the end of a broadcast, a quiet lane) is written by the recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from consentgate.adapters.base import (
    CHANNELS,
    ChannelAdapter,
    Permit,
    PermitError,
    RecipientRefused,
    RetryableSendError,
    SendError,
)
from consentgate.adapters.pacing import Pacer, SendBudget
from consentgate.bot import outbox
from consentgate.bot.addresses import mask
from consentgate.bot.broadcasts import PAUSE_AFTER_ATTEMPTS, BroadcastScheduler, pause_if_failing
from consentgate.bot.compose import Composer
from consentgate.bot.gate import Admission, ConsentGate
from consentgate.bot.ledger import Ledger
from consentgate.bot.metrics import Metrics
from consentgate.bot.outbox import Claimed, MessageStatus
from consentgate.storage.db import Database

__all__ = ["DispatchThread", "Dispatcher"]

_log = structlog.get_logger("consentgate.dispatch")

#: The most messages one lane leases in one claim.
MAX_CLAIM = 1000
#: The most results one transaction records.
RECORD_BATCH = 500
#: How long the recorder leaves results for a gate admission to carry (seconds).
RECORD_DELAY = 0.25


@dataclass(frozen=True)
class _Result:
    claimed: Claimed
    provider_id: str | None = None
    error: SendError | None = None


async def _take_free(slots: asyncio.Semaphore, wanted: int) -> int:
    """Wait for one of ``slots``, then take those of the rest that are free now, up to
    ``wanted`` in all; return how many were taken."""
    await slots.acquire()
    got = 1
    while got < wanted and not slots.locked():
        await slots.acquire()  # free: returns at once
        got += 1
    return got


class Dispatcher:
    def __init__(
        self,
        db: Database,
        gate: ConsentGate,
        ledger: Ledger,
        composer: Composer,
        adapters: Mapping[tuple[str, str], ChannelAdapter],
        metrics: Metrics,
        *,
        worker_id: str | None = None,
        lease_seconds: float = 60.0,
        lookahead_seconds: float = 1.0,
        max_in_flight: int = 64,
        poll_interval: float = 0.25,
        retry_base_seconds: float = 1.0,
        pacer_factory: Callable[[ChannelAdapter], SendBudget] | None = None,
        pause_after_attempts: int = PAUSE_AFTER_ATTEMPTS,
    ) -> None:
        self.db = db
        self.gate = gate
        self.ledger = ledger
        self.composer = composer
        self.adapters = dict(adapters)
        self.metrics = metrics
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:12]}"
        self.lease_seconds = lease_seconds
        self.lookahead = lookahead_seconds
        self.poll_interval = poll_interval
        self.retry_base_seconds = retry_base_seconds
        self.pause_after_attempts = pause_after_attempts
        self._slots = asyncio.Semaphore(max_in_flight)
        # Per adapter instance (it owns the connection pool; lanes sharing one share it):
        # no more messages admitted than it has connections, so none waits for one.
        self._capacity: dict[tuple[str, str], asyncio.Semaphore] = {}
        by_adapter: dict[int, asyncio.Semaphore] = {}
        for key, adapter in self.adapters.items():
            if adapter.max_concurrency is not None:
                self._capacity[key] = by_adapter.setdefault(
                    id(adapter), asyncio.Semaphore(adapter.max_concurrency))
        self._pacers: dict[str, SendBudget] = {}
        factory: Callable[[ChannelAdapter], SendBudget] = (
            pacer_factory or (lambda a: Pacer(a.rate_per_second)))
        for adapter in self.adapters.values():
            if adapter.sender_key not in self._pacers:
                self._pacers[adapter.sender_key] = factory(adapter)
        self._wake: dict[tuple[str, str], asyncio.Event] = {k: asyncio.Event()
                                                            for k in self.adapters}
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        # Results not yet written: ``_done`` for an admission to carry, ``_recorder_only``
        # for those an admission failed to write (so one bad result cannot stop the lanes).
        self._done: deque[_Result] = deque()
        self._recorder_only: deque[_Result] = deque()
        self._have_results = asyncio.Event()
        self._call_seconds = {ch: metrics.send_seconds.labels(ch) for ch in CHANNELS}
        #: Starts scheduled broadcasts wherever a dispatcher runs (serve and worker alike).
        self.scheduler: BroadcastScheduler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one :meth:`run` runs on

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop :meth:`run` runs on (None before it starts)."""
        return self._loop

    def wake(self, campaign: str | None = None, channel: str | None = None) -> None:
        """New work was queued: lanes stop waiting for the next poll. Safe to call from
        any thread (the web server's loop wakes a dispatcher running in a thread)."""
        self._on_own_loop(self._wake_lanes, campaign, channel)

    def _wake_lanes(self, campaign: str | None, channel: str | None) -> None:
        for (c, ch), ev in self._wake.items():
            if (campaign is None or c == campaign) and (channel is None or ch == channel):
                ev.set()

    def stop(self) -> None:
        """Stop claiming (see :meth:`run`). Safe to call from any thread."""
        self._on_own_loop(self._stop_now)

    def _stop_now(self) -> None:
        self._stopping.set()
        for ev in self._wake.values():
            ev.set()

    def _on_own_loop(self, fn: Callable[..., None], *args: object) -> None:
        # asyncio's events wake only waiters of the loop they are set on.
        loop = self._loop
        if loop is None or loop.is_closed():
            fn(*args)
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    async def run(self) -> None:
        """Run until :meth:`stop`; then release unsent leases and finish in-flight sends."""
        self._loop = asyncio.get_running_loop()
        recorder = asyncio.create_task(self._record_loop(), name="dispatch-recorder")
        reaper = asyncio.create_task(self._reap_loop(), name="dispatch-reaper")
        lanes = [asyncio.create_task(self._lane(key, adapter), name=f"lane-{key}")
                 for key, adapter in self.adapters.items()]
        scheduler = (None if self.scheduler is None else asyncio.create_task(
            self.scheduler.run(self._stopping), name="broadcast-scheduler"))
        try:
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            if scheduler is not None:
                scheduler.cancel()  # a start in progress rolls back or resumes at start-up
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduler
            reaper.cancel()
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), timeout=8.0)
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await self._record_leftovers()
            async with self.db.write(bulk=True) as conn:
                await outbox.release_leases(conn, self.worker_id)

    async def _lane(self, key: tuple[str, str], adapter: ChannelAdapter) -> None:
        pacer = self._pacers[adapter.sender_key]
        wake = self._wake[key]
        # A fast sender's second is capped: one claim holds the write lock (SQLite) for as
        # long as it takes to lease its rows, and a STOP may be waiting behind it.
        want = max(1, min(int(adapter.rate_per_second * self.lookahead), MAX_CLAIM))
        prefetch: asyncio.Task[list[Claimed]] | None = None
        try:
            while not self._stopping.is_set():
                wake.clear()
                if prefetch is not None:
                    claimed, prefetch = await prefetch, None
                else:
                    claimed = await self._claim(key, want, ask_first=True)
                if not claimed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self.poll_interval)
                    continue
                pending = deque(claimed)
                while pending and not self._stopping.is_set():
                    if prefetch is None and len(claimed) == want and len(pending) <= want // 2:
                        # A full claim: there is likely more. Lease it while this claim's
                        # last messages go, so the sender never waits for a claim.
                        prefetch = asyncio.create_task(self._claim(key, want, ask_first=False))
                    await self._send_some(key, pacer, pending)
                if pending:
                    async with self.db.write(bulk=True) as conn:
                        await outbox.release_leases(conn, self.worker_id,
                                                    [c.id for c in pending])
        finally:
            if prefetch is not None:  # its leases are released with the worker's at the end
                prefetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prefetch

    async def _claim(self, key: tuple[str, str], want: int, *, ask_first: bool) -> list[Claimed]:
        """Lease up to ``want`` due messages; ``ask_first`` looks in a read transaction
        before taking the write lock, as an idle lane's poll mostly finds nothing."""
        campaign, channel = key
        try:
            if ask_first:
                async with self.db.read() as conn:
                    if not await outbox.has_due(conn, campaign=campaign, channel=channel):
                        return []
            return await self.db.write_sync(functools.partial(
                outbox.claim_sync, worker=self.worker_id, campaign=campaign,
                channel=channel, limit=want, lease_seconds=self.lease_seconds), bulk=True)
        except Exception:
            _log.exception("dispatch.claim_failed", campaign=campaign, channel=channel)
            return []

    async def _send_some(self, key: tuple[str, str], pacer: SendBudget,
                         pending: deque[Claimed]) -> None:
        """Take the next messages of ``pending`` whose turn has come to the gate and send
        those it admits."""
        n = await pacer.take(len(pending))
        # Only as many go to the gate as can go on the wire at once (see _take_slots);
        # turns the slots do not cover go back to the sender's budget.
        got = await self._take_slots(key, n)
        pacer.give_back(n - got)
        batch = [pending.popleft() for _ in range(got)]
        try:
            used = await self._admit_and_send(batch)
        except Exception:
            _log.exception("dispatch.admit_failed", campaign=key[0], channel=key[1])
            used = 0
            self._free_slots(key, len(batch))
        pacer.give_back(got - used)

    async def _take_slots(self, key: tuple[str, str], wanted: int) -> int:
        """Hold a send slot of the lane's adapter and of the dispatcher for each of 1 ..
        ``wanted`` messages; return how many. Released by :meth:`_free_slots`.

        Each kind is waited for one slot at a time, then only the free ones are taken:
        waiting for ``wanted`` slots while holding some deadlocks once ``wanted`` exceeds
        what there is (a fast sender's burst against max_in_flight or against a relay's
        few connections). The adapter's slots are always taken before the dispatcher's, so
        a lane waiting for an adapter slot holds none of the dispatcher's, and a lane
        waiting for a dispatcher slot waits only for sends, which end.
        """
        capacity = self._capacity.get(key)
        if capacity is None:
            return await _take_free(self._slots, wanted)
        got = await _take_free(capacity, wanted)
        try:
            taken = await _take_free(self._slots, got)
        except BaseException:  # cancelled while waiting: hold nothing
            for _ in range(got):
                capacity.release()
            raise
        for _ in range(got - taken):
            capacity.release()
        return taken

    def _free_slots(self, key: tuple[str, str], n: int = 1) -> None:
        capacity = self._capacity.get(key)
        for _ in range(n):
            self._slots.release()
            if capacity is not None:
                capacity.release()

    async def _admit_and_send(self, batch: list[Claimed]) -> int:
        results = self._take_results(self._done)
        try:
            admission = await self._write(results, batch)
        except BaseException:
            self._recorder_only.extend(results)
            self._have_results.set()
            raise
        permitted_ids = {c.id for c, _ in admission.permitted}
        for c in batch:
            if c.id not in permitted_ids:
                self._free_slots((c.campaign, c.channel))
        for c, reason in admission.refused:
            self.metrics.gate_refusals.labels(c.channel, reason.value).inc()
            self.metrics.messages.labels(c.channel, MessageStatus.BLOCKED).inc()
            _log.info("message.blocked", campaign=c.campaign, channel=c.channel,
                      message_id=c.id, reason=reason.value, to=mask(c.address))
        for c, permit in admission.permitted:
            task = asyncio.create_task(self._send(c, permit))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        self._recorded(results)  # after the sends have started: log lines can wait
        return len(admission.permitted)

    async def _write(self, results: list[_Result], batch: list[Claimed]) -> Admission:
        """Write earlier sends' ``results``, then decide ``batch`` (may be empty), in one
        transaction: the results first, so a provider's opt-out is on record before the
        batch is decided. When every result is a success (the usual case) it runs in one
        go (:meth:`Database.write_sync`)."""
        if all(r.error is None for r in results):
            sent = [(r.claimed.id, r.provider_id) for r in results]
            return await self.db.write_sync(
                functools.partial(self._record_sent_and_admit, sent, batch), bulk=True)
        async with self.db.write(bulk=True) as conn:
            await self._record(conn, results)
            return await self.gate.admit(conn, self.worker_id, batch, self.lease_seconds)

    def _record_sent_and_admit(self, sent: list[tuple[int, str | None]],
                               batch: list[Claimed], conn: Connection) -> Admission:
        outbox.mark_sent_sync(conn, sent)
        return self.gate.admit_sync(conn, self.worker_id, batch, self.lease_seconds)

    async def _send(self, c: Claimed, permit: Permit) -> None:
        adapter = self.adapters[(c.campaign, c.channel)]
        try:
            message = self.composer.compose(c)
            started = time.monotonic()
            result = await adapter.send(message, permit)
            self._call_seconds[c.channel].observe(time.monotonic() - started)
            self._finished(_Result(c, provider_id=result.provider_id))
        except SendError as exc:
            self._finished(_Result(c, error=exc))
        except PermitError as exc:
            _log.error("dispatch.permit_refused", campaign=c.campaign, channel=c.channel,
                       message_id=c.id, reason=str(exc))
            self._finished(_Result(c, error=SendError("permit_refused", str(exc))))
        except Exception as exc:  # an adapter bug must not leave the row stuck in sending
            _log.exception("dispatch.adapter_error", campaign=c.campaign, channel=c.channel,
                           message_id=c.id)
            self._finished(_Result(c, error=RetryableSendError("adapter_error", repr(exc))))
        finally:
            # After adapter.send has returned, so the adapter has let go of its connection.
            self._free_slots((c.campaign, c.channel))

    def _finished(self, result: _Result) -> None:
        self._done.append(result)
        self._have_results.set()

    def _take_results(self, source: deque[_Result], most: int | None = None) -> list[_Result]:
        n = min(len(source), RECORD_BATCH, RECORD_BATCH if most is None else most)
        batch = [source.popleft() for _ in range(n)]
        if not self._done and not self._recorder_only:
            self._have_results.clear()
        return batch

    async def _record_loop(self) -> None:
        while True:
            await self._have_results.wait()
            # A busy lane's next admission carries these; give it the chance.
            await asyncio.sleep(RECORD_DELAY)
            # What is here now, not what arrives while writing it: that is for the lanes.
            await self._record_leftovers(len(self._recorder_only) + len(self._done))

    async def _record_leftovers(self, most: int | None = None) -> None:
        """Write results not yet written (``most`` of them, or all), in transactions of
        their own."""
        for source in (self._recorder_only, self._done):
            while source and (most is None or most > 0):
                batch = self._take_results(source, most)
                if most is not None:
                    most -= len(batch)
                try:
                    await self._write(batch, [])
                except asyncio.CancelledError:
                    source.extendleft(reversed(batch))  # not written: still to do
                    self._have_results.set()
                    raise
                except Exception:
                    # Left ``sending``: the reaper fails them as interrupted, never resent.
                    _log.exception("dispatch.record_failed", count=len(batch))
                else:
                    self._recorded(batch)

    async def _record(self, conn: AsyncConnection, batch: list[_Result]) -> None:
        """Write ``batch``'s outcomes in the caller's transaction."""
        if not batch:
            return
        sent = [(r.claimed.id, r.provider_id) for r in batch if r.error is None]
        await outbox.mark_sent(conn, sent)
        for r in batch:
            if r.error is not None:
                await self._record_error(conn, r.claimed, r.error)
        for broadcast_id in sorted({r.claimed.broadcast_id for r in batch if r.error
                                    is not None and r.claimed.broadcast_id is not None}):
            if await pause_if_failing(conn, broadcast_id, self.pause_after_attempts):
                _log.warning("broadcast.paused", broadcast_id=broadcast_id,
                             reason="too_many_failures")

    def _recorded(self, batch: list[_Result]) -> None:
        """Metrics and log lines of a committed batch's sends."""
        sent = Counter(r.claimed.channel for r in batch if r.error is None)
        for channel, n in sent.items():
            self.metrics.messages.labels(channel, MessageStatus.SENT).inc(n)
        for r in batch:
            c = r.claimed
            if r.error is None:
                _log.info("message.sent", campaign=c.campaign, channel=c.channel,
                          message_id=c.id, provider_id=r.provider_id, to=mask(c.address))

    async def _record_error(self, conn: AsyncConnection, c: Claimed, error: SendError) -> None:
        log = _log.bind(campaign=c.campaign, channel=c.channel, message_id=c.id,
                        reason=error.reason, to=mask(c.address))
        if isinstance(error, RetryableSendError):
            status = await outbox.mark_retry(conn, c.id, c.attempts + 1, error.reason,
                                             error.retry_after, self.retry_base_seconds)
            log.warning("message.retry" if status == MessageStatus.QUEUED else "message.failed",
                        attempts=c.attempts + 1)
            if status == MessageStatus.FAILED:
                self.metrics.messages.labels(c.channel, MessageStatus.FAILED).inc()
            return
        await outbox.mark_failed(conn, c.id, error.reason, error.detail)
        self.metrics.messages.labels(c.channel, MessageStatus.FAILED).inc()
        log.warning("message.failed")
        if isinstance(error, RecipientRefused):
            # The provider says this person does not want this: never try them again.
            await self.ledger.record_opt_out(
                conn, c.campaign, c.channel, c.address, method="provider",
                reason=error.reason, actor="provider",
                every_campaign=error.scope == "all", suppression_reason=error.reason)
            self.metrics.opt_outs.labels(c.channel, "provider").inc()
            log.info("recipient.refused", scope=error.scope)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(max(5.0, self.lease_seconds / 4))
            try:
                async with self.db.write(bulk=True) as conn:
                    n = await outbox.reap_interrupted(conn)
                if n:
                    _log.warning("dispatch.reaped_interrupted", count=n)
            except Exception:
                _log.exception("dispatch.reap_failed")


class DispatchThread:
    """Runs a :class:`Dispatcher` on an event loop in a thread of its own, so the web
    server's loop never waits behind provider calls.

    During a full-speed broadcast the dispatcher keeps some fifty provider calls and its
    transactions going; sharing a loop with them, a STOP's webhook waited for one long loop
    turn per await (docs/benchmarks.md, section 3). The dispatcher's database engine and
    adapters must be its own (``gateway.Gateway(dispatch_thread=True)`` builds them):
    connections and sessions belong to the loop that opened them. Its scheduler, if any,
    stays on the caller's loop, which also serves the requests that wake it. Its loop stands
    aside between turns while the web server's loop applies a person's change
    (:class:`consentgate.storage.db.Precedence`): the two threads share one interpreter lock.

    ``close`` runs on the dispatcher's loop after it has stopped (its adapters' sessions and
    its engine are closed where they were opened).
    """

    def __init__(self, dispatcher: Dispatcher,
                 close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.dispatcher = dispatcher
        self._close = close
        self.thread: threading.Thread | None = None

    def stop(self) -> None:
        self.dispatcher.stop()

    async def run(self) -> None:
        """Start the thread and wait for the dispatcher to finish (after :meth:`stop`).
        Cancelled (``serve``'s shutdown budget is spent), it tells the dispatcher to stop
        and returns at once: the thread is a daemon, and whatever it leaves is what a crash
        leaves (docs/operations.md)."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        scheduler = self.dispatcher.scheduler
        self.dispatcher.scheduler = None  # see the class's docstring
        stopping = asyncio.Event()

        def report(error: BaseException | None) -> None:
            if finished.done():
                return
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

        precedence = self.dispatcher.db.precedence

        def new_loop() -> asyncio.AbstractEventLoop:
            # Stands aside between turns while a person's change is applied on the web
            # server's loop (storage.db.Precedence).
            return asyncio.SelectorEventLoop(precedence.selector())

        def main() -> None:
            error: BaseException | None = None
            try:
                with asyncio.Runner(loop_factory=new_loop) as runner:
                    runner.run(self._dispatch())
            except BaseException as exc:  # handed to the waiting loop
                error = exc
            with contextlib.suppress(RuntimeError):  # the waiting loop has closed
                loop.call_soon_threadsafe(report, error)

        self.thread = threading.Thread(target=main, name="consentgate-dispatcher", daemon=True)
        self.thread.start()
        schedule = (None if scheduler is None else asyncio.create_task(
            scheduler.run(stopping), name="broadcast-scheduler"))
        try:
            await asyncio.shield(finished)
            self.thread.join()  # at its very end already: it reported as it returned
        except asyncio.CancelledError:
            self.dispatcher.stop()
            raise
        finally:
            stopping.set()
            self.dispatcher.scheduler = scheduler
            if schedule is not None:
                schedule.cancel()  # a start in progress rolls back or resumes at start-up
                with contextlib.suppress(asyncio.CancelledError):
                    await schedule

    async def _dispatch(self) -> None:
        try:
            await self.dispatcher.run()
        finally:
            if self._close is not None:
                await self._close()
