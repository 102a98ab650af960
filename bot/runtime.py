"""Settings of the Python process for the long-running commands (``serve``, ``worker``)."""

from __future__ import annotations

import gc
import sys

__all__ = ["GC_THRESHOLDS", "SWITCH_INTERVAL", "tune_garbage_collector", "tune_thread_switching"]

#: Collect the youngest generation after 20,000 net new container objects (Python's default
#: is 700): a broadcast allocates and frees many short-lived objects per message (a request,
#: its response, rows), and at the default the collector ran about once a message batch,
#: about a tenth of the process's CPU time at full speed (docs/benchmarks.md).
GC_THRESHOLDS = (20_000, 20, 10)


def tune_garbage_collector() -> None:
    """Call once start-up is done. What exists then (modules, the schema, configuration,
    connection pools) lives as long as the process: freezing it keeps full collections from
    walking it again and again. Garbage cycles are still collected, only in larger batches."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: How long a thread may keep the interpreter while another waits for it (seconds; Python's
#: default is 0.005). With the dispatcher on a thread of its own, the web server's thread
#: waits for the interpreter after each SQLite statement of a STOP (the driver lets go of it
#: while SQLite works); at 5 ms a turn, a dozen statements could wait 60 ms behind a busy
#: dispatcher (docs/benchmarks.md, section 3).
SWITCH_INTERVAL = 0.001


def tune_thread_switching() -> None:
    """Call when the dispatcher runs on a thread of its own (``serve``)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
