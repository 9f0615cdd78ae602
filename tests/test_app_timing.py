"""Time is an output too (issue 37): what session B receives, and how much work the server does for B, does not
depend on the size of session A's folder. Driven through the real server's HTTP queue, reading every message
B gets, as a browser would."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from dphyper.config import EXAMPLES_DIR

from .test_app import app_module, app_url  # noqa: F401  (fixtures)
from .test_hypernet import needs_models

# What Gradio computes from durations (its own and, before issue 37, every session's average).
TIME_FIELDS = ("eta", "rank_eta", "avg_time", "average_duration")


@pytest.fixture(scope="module")
def server(app_module, app_url):  # noqa: F811  (test_app's server: the real app, launched the way it ships)
    return app_module.TEST_DEMO, app_url


def call(demo, url: str, api_name: str, data: list, session: str) -> list[dict]:
    """One queued event of ``session``, as the browser sends it; every message the server streams back for it."""
    fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == api_name)
    join = httpx.post(url + "gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                           "event_data": None, "trigger_id": None}, timeout=60)
    join.raise_for_status()
    event_id = join.json()["event_id"]
    msgs: list[dict] = []
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=300) as r:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            m = json.loads(line[5:])
            if m.get("event_id") not in (None, event_id):
                continue
            msgs.append(m)
            if m.get("msg") == "process_completed":
                assert m.get("success"), m
                break
    return msgs


def timing_values(msgs: list[dict]) -> list:
    """Every duration-derived value in the messages (nested output included), by field name."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in TIME_FIELDS:
                    found.append((k, v))
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(msgs)
    return found


def shape(msgs: list[dict]) -> list[tuple]:
    """What B saw, without its own outputs (random samples) and its own event's own duration."""
    return [(m.get("msg"), m.get("rank"), m.get("queue_size"), tuple(timing_values([m]))) for m in msgs]


@needs_models
def test_session_b_learns_nothing_of_session_a_folder_size(server, monkeypatch):
    from gradio_client import Client, handle_file
    import opacus.accountants.utils as opacus_utils

    demo, url = server
    searches = []
    real = opacus_utils.get_noise_multiplier

    def counting(**kw):
        searches.append(kw)
        return real(**kw)

    monkeypatch.setattr(opacus_utils, "get_noise_multiplier", counting)
    files = sorted((EXAMPLES_DIR / "trousers").glob("*.png"))
    settings = [0.0, False, 1e-5, 0]  # log10 epsilon, no privacy, delta, step budget: the page's defaults
    seen = {}
    for n_a in (200, 50):
        alice = Client(url, verbose=False)  # a new visitor each time, with a folder of n_a images
        alice.predict([handle_file(str(p)) for p in files[:n_a]], None, *settings, api_name="/load_upload")
        alice.predict(0.0, False, 1e-5, 4, None, api_name="/run_hypernet")
        bob = uuid.uuid4().hex[:10]  # then Bob, in his own session, loads the 200 bags and runs the hypernetwork
        before = len(searches)
        load = call(demo, url, "load_example", ["bags", *settings], bob)
        bob_searches = len(searches) - before  # the noise-multiplier searches the server ran for Bob's plan
        run = call(demo, url, "run_hypernet", [None, 0.0, False, 1e-5, 4, None, None, None], bob)
        # No average of anyone's durations reaches Bob: every duration-derived value he receives is None.
        assert all(v is None for _, v in timing_values(load + run)), timing_values(load + run)
        # His plan costs the server the same work whether or not someone just loaded a folder of his size
        # (a shared sigma cache answered him at once after Alice's 200 images).
        assert bob_searches > 0
        seen.setdefault(n_a, []).append((bob_searches, shape(load), shape(run)))
    assert seen[200][0] == seen[50][0]


def test_no_server_wide_timing_is_published(server):
    """Gradio's /monitoring (every function's run-time percentiles over all sessions) is off, and loading has no
    server-wide slot (a visitor's wait would be the rest of another visitor's load)."""
    demo, url = server
    r = httpx.get(url + "monitoring/summary", timeout=30)
    assert r.status_code == 403, (r.status_code, r.text[:200])  # 200 with every function's percentiles when on
    for fn in demo.fns.values():
        if fn.name in ("load_example", "load_upload"):
            assert fn.concurrency_limit is None and fn.concurrency_id != "load", fn.name
