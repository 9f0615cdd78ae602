"""Session hygiene: forget a closed or idle session, sweep what uploads leave behind."""

from __future__ import annotations

import gradio as gr
import threading
import time

import dphyper.app.common as common  # the module: tests replace TEMP_DIR and MAX_IMAGES there
from .common import SESSION_TTL_S
from .data_in import _LOAD_LOCKS, _LOAD_LOCKS_GUARD


# ---------------------------------------------------------------- session hygiene


def forget_session(demo: gr.Blocks, session_hash: str) -> None:
    """Drop everything Gradio keeps for one session: State values *and* every component's last
    value (thumbnails, file names in the overview, n, the exact-mean plot), not only ``gr.State``."""
    holder = getattr(demo, "state_holder", None)
    if holder is None or session_hash not in holder.session_data:
        return
    with _LOAD_LOCKS_GUARD:
        _LOAD_LOCKS.pop(session_hash, None)
    holder.delete_state(session_hash)  # runs the State components' delete callbacks
    with holder.lock:
        holder.session_data.pop(session_hash, None)
        holder.time_last_used.pop(session_hash, None)


def forget_idle_sessions(demo: gr.Blocks, max_idle_s: float = SESSION_TTL_S) -> int:
    """Forget every session with no event for ``max_idle_s`` seconds; returns how many went."""
    import datetime

    holder = getattr(demo, "state_holder", None)
    if holder is None:
        return 0
    now = datetime.datetime.now()
    with holder.lock:
        idle = [sid for sid, t in holder.time_last_used.items() if (now - t).total_seconds() >= max_idle_s]
    for sid in idle:
        forget_session(demo, sid)
    return len(idle)


def _start_sweeper(demo: gr.Blocks, every_s: float = 60.0) -> None:
    """A daemon thread that forgets idle sessions (and sweeps the upload cache's leftovers) every minute while
    the demo exists."""
    import weakref

    ref = weakref.ref(demo)

    def loop() -> None:
        while True:
            time.sleep(every_s)
            d = ref()
            if d is None:
                return
            forget_idle_sessions(d)
            _sweep_upload_leftovers()
            del d

    threading.Thread(target=loop, daemon=True, name="dphyper-session-sweeper").start()




def _sweep_upload_leftovers(max_age_s: float = 120.0) -> int:
    """Delete loose files at the top of the upload cache untouched for ``max_age_s`` seconds; returns how many.

    Gradio's multipart parser leaves one empty ``tmp*`` file there per file uploaded through its API client
    (measured with gradio 5: three uploads, three zero-byte files, never deleted while the server runs): no
    pixels or names, but they pile up and say when and how many files each upload held. Gradio keeps nothing
    else loose there (uploads live in per-hash folders, runs in ``run-*``), and a file being written is
    younger than the age limit."""
    gone = 0
    for f in common.TEMP_DIR.glob("*"):
        try:
            if f.is_file() and not f.is_symlink() and time.time() - f.stat().st_mtime > max_age_s:
                f.unlink()
                gone += 1
        except OSError:
            pass
    return gone
