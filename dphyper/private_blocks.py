"""``gr.Blocks`` that tells no visitor how long *other* visitors' events took (issue 37).

Gradio 6.31 keeps two duration averages per event function, for all sessions together, and sends them to
every client: the queue's (``Queue.process_time_per_fn``: the ETA of the "estimation" and "process_starts"
messages) and the function's own (``BlockFunction.total_runtime / total_runs``: ``average_duration`` in every
response, ``avg_time`` of "process_completed"). A method whose run time grows with the private n (the quadratic
EM: 0.25 s per image; the load event's decoding; DP sparse's scoring) would so tell the next visitor the
previous visitor's n to about 10 %, and later averages could be differenced.

Here the queue records no durations (every estimate it would send is None) and no response carries an
average. Gradio's ``/monitoring`` endpoint (on by default: per-function run-time percentiles over all
sessions, no key needed) is switched off, and so is its run history (which keeps a call's inputs and outputs,
thumbnails of private images included, in the browser or a connected bucket). What a visitor still sees is
their own events' own time (``duration``), which depends on their own data only, and the wait for a slot
that another visitor's job holds (README, "Time between visitors"). Both hooks are Gradio internals: ``tests/test_app_timing.py`` drives the real server with two
sessions and fails if a Gradio upgrade brings an average back.
"""

from __future__ import annotations

import gradio as gr
from gradio.queueing import ProcessTime


class _NoDurations(dict):
    """The queue's per-function duration table, recording nothing: ``fn in table`` is always False (so every ETA
    is None), and ``table[fn]`` is a fresh, discarded ``ProcessTime`` (so ``.add(duration)`` goes nowhere)."""

    def __contains__(self, fn: object) -> bool:
        return False

    def __getitem__(self, fn: object) -> ProcessTime:
        return ProcessTime()


class PrivateTimingBlocks(gr.Blocks):
    """``gr.Blocks`` whose queue and responses carry no cross-session duration (see the module docstring)."""

    def queue(self, *args, **kwargs):
        out = super().queue(*args, **kwargs)
        self._queue.process_time_per_fn = _NoDurations()  # queue() builds a new Queue each call
        return out

    def launch(self, *args, **kwargs):
        # Forced, not defaults: a caller's enable_monitoring=True would publish every session's run times.
        kwargs["enable_monitoring"] = False
        kwargs["run_history"] = False
        return super().launch(*args, **kwargs)

    async def process_api(self, *args, **kwargs):
        out = await super().process_api(*args, **kwargs)
        if isinstance(out, dict):
            out["average_duration"] = None  # an average over every session's runs of this function
        return out
