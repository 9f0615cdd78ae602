"""The app: start-up, P3 in Chromium, redraw time, peak memory per method."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..config import REPO_DIR
from ..markdown_sections import write_section
from .common import BenchConfig, machine


APP_RSS_SIZES = (64, 200)
APP_STEP_BUDGET = 20


def _vm_hwm_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def _peak_rss_per_method(url: str, pid: int, files: list[Path]) -> dict:
    """Method -> {n: MB}: each registered method's run through the app's API on n uploaded images, the process's
    peak RSS reset before each run, so each number is that run's own peak (on top of the loaded app)."""
    from gradio_client import Client, handle_file

    from ..methods import METHODS

    out: dict = {name: {} for name in METHODS}
    for n in APP_RSS_SIZES:
        client = Client(url, verbose=False)
        client.predict([handle_file(str(p)) for p in files[:n]], None, api_name="/load_upload")
        for name, m in METHODS.items():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            args = [0.0, False, 1e-5, 16] + ([] if m.one_shot else [APP_STEP_BUDGET]) + [None]
            client.predict(*args, api_name=f"/run_{name.replace('-', '_')}")
            out[name][str(n)] = _vm_hwm_kb(pid) / 1024
    return out


def bench_app(cfg: BenchConfig) -> dict:
    """P3 (200 uploaded images -> 16 samples), plot redraw after a slider change, P5 (peak RSS)."""
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    from gradio_client import Client

    from ..config import EXAMPLES_DIR

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="dphyper-bench-app-"))
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "DPHYPER_TEMP_DIR": str(tmp / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(REPO_DIR / "app.py")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        client = None
        while time.perf_counter() - t0 < 300:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(1)
        if client is None:
            raise RuntimeError("the app did not start within 300 s")
        startup = time.perf_counter() - t0
        files = sorted(p for s in ("sneakers", "trousers") for p in (EXAMPLES_DIR / s).glob("*.png"))[:200]
        p3 = _p3_in_browser(f"http://127.0.0.1:{port}/", files)
        redraw = []
        for i in range(10):
            t = time.perf_counter()
            client.predict(-1 + 0.2 * i, False, None, api_name="/utility_figure")
            redraw.append(time.perf_counter() - t)
        hwm = _vm_hwm_kb(proc.pid)
        per_method = _peak_rss_per_method(f"http://127.0.0.1:{port}/", proc.pid, files)
    finally:
        proc.terminate()
        proc.wait(30)
    copy_ms = _lora_copy_ms()
    res = {"machine": machine(), "startup_seconds": startup, "p3": p3, "lora_copy_ms": copy_ms,
           "p3_median_seconds": float(np.median([r["total"] for r in p3])),
           "p3_command": "Chromium (Playwright): choose 200 PNG files, wait for the count, click, wait for the caption",
           "redraw_median_ms": 1000 * float(np.median(redraw)), "redraw_max_ms": 1000 * max(redraw),
           "peak_rss_mb": hwm / 1024, "peak_rss_per_method_mb": per_method}
    rows = ["## The app (`python -m dphyper bench --suite app`)", "",
            f"Machine: {res['machine']}. `python app.py` in a subprocess. P3 in real Chromium (Debian's, via "
            "Playwright; a new page each time): choose 200 PNG files in the upload box, wait for '200 images from "
            "your upload', "
            "click the hypernetwork button, wait for its caption (release, LoRA, 16 samples with 25 DDIM steps, "
            "gallery shown). The redraw is timed over HTTP with `gradio_client`.", "",
            f"- start-up until the API answers (models loaded and warmed): {startup:.1f} s",
            f"- **P3**: 200 uploaded PNGs → 16 hypernetwork samples back: **{res['p3_median_seconds']:.2f} s** "
            f"(median of {len(p3)}; runs {', '.join(format(r['total'], '.2f') for r in p3)} s; upload + decode "
            f"{np.median([r['upload_and_decode'] for r in p3]):.2f} s of it, until the count shows). Target ≤ 10 s.",
            f"- cost of the concurrency fix (issue 12): every LoRA sampling call works on its own copy of the "
            f"base UNet instead of swapping parameters in the shared one: **{copy_ms:.1f} ms** per call "
            f"(median of 20, in-process), {100 * copy_ms / 1000 / res['p3_median_seconds']:.2f} % of P3.",
            f"- slider change → new privacy-utility figure (HTTP round trip): **{res['redraw_median_ms']:.0f} ms** "
            f"median, {res['redraw_max_ms']:.0f} ms max of 10. Target ≤ 300 ms.",
            f"- **P5**: peak RSS of the app process (VmHWM) over start-up and the runs: "
            f"**{res['peak_rss_mb']:.0f} MB**. Target ≤ 1,536 MB.",
            "- **Peak RSS of each method's run** in the same app process (issue 37): VmHWM reset before each run "
            "(`/proc/PID/clear_refs` 5), the folder uploaded through the API, ε = 1, 16 samples, the training "
            f"methods with a step budget of {APP_STEP_BUDGET} (memory follows the physical batch, not the number of "
            "steps). Target ≤ 1,536 MB:", "",
            "| method | " + " | ".join(f"n = {n}" for n in APP_RSS_SIZES) + " |",
            "|---" * (len(APP_RSS_SIZES) + 1) + "|"]
    for name, by_n in per_method.items():
        rows.append(f"| {name} | " + " | ".join(f"{by_n[str(n)]:.0f} MB" for n in APP_RSS_SIZES) + " |")
    write_section(cfg.doc, "app", "\n".join(rows))
    return res


def _lora_copy_ms(repeats: int = 20) -> float:
    """Milliseconds to build one ``lora_model_fn`` (a private copy of the shipped UNet)."""
    from ..diffusion import load_unet
    from ..lora import add_lora, lora_model_fn

    unet = add_lora(load_unet(device=torch.device("cpu")))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        lora_model_fn(unet, {})
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times))


def _p3_in_browser(url: str, files: list[Path], repeats: int = 3) -> list[dict]:
    import shutil

    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("text=from example set", timeout=120000)  # the page's first load is done
            page.get_by_text("…or upload your own").click()
            t = time.perf_counter()
            page.locator("input[type=file][multiple]:not([webkitdirectory])").set_input_files([str(f) for f in files])
            page.wait_for_selector("text=from your upload", timeout=120000)  # not the example's count
            t_upload = time.perf_counter() - t
            page.get_by_role("button", name="Hypernetwork (seconds)").click()
            page.wait_for_selector("text=to a LoRA and samples", timeout=120000)
            total = time.perf_counter() - t
            n_img = page.locator("img[src*='gradio_api/file'], img[src*='/file=']").count()
            out.append({"total": total, "upload_and_decode": t_upload, "images": n_img})
            # The base model's column refreshes after the run: let it finish here, or it runs into the next
            # repeat's upload and run and times two visitors' work as one.
            page.wait_for_selector("text=no fine-tuning, public only", timeout=120000)
            page.close()
        browser.close()
    return out
