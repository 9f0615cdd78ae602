"""Start the server: temp folder, public models, the page."""

from __future__ import annotations

import os
import shutil

from ..models import shared_models
import dphyper.app.common as common  # the module: tests replace TEMP_DIR and MAX_IMAGES there
from .common import MAX_FILE_MB
from .layout import CSS, build_demo
from .noise_view import _public_map


def prepare_temp_dir() -> None:
    """The app's own upload cache, emptied at start (a crash must not leave uploads behind)."""
    if common.TEMP_DIR.exists():
        shutil.rmtree(common.TEMP_DIR, ignore_errors=True)
    common.TEMP_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(common.TEMP_DIR)


WARM_SAMPLES = 16  # the page's default "Samples per method"


def warm_up() -> None:
    """Load every public model before serving, and run the flagship's whole path once on a bundled public example
    set, so the first user waits for neither.

    The first pass through the LoRA sampling path at a batch shape costs about 4 s more than the next (the CPU
    kernels are set up on first use); P3 measured the first visitor's upload at 8.4 s before this pass. The pass
    reads only public assets and records nothing: no ledger, no session.

    ``gc.freeze()`` then moves every object alive at start-up (about 650,000: the models' modules, Gradio, plotly)
    out of the collector's sight. Each run ends with a full ``gc.collect()`` (``memory.release_memory``), which
    spent 0.37 s re-scanning those objects to free a few hundred; frozen, it scans only what the run made.
    """
    import gc

    from ..config import EXAMPLES_DIR
    from ..data import load_folder
    from ..memory import release_memory
    from ..methods import FLAGSHIP, get_method, run_method
    from .runs import _owner_agreement

    m = shared_models()
    m.unet, m.encoder, m.hypernet, m.evaluator  # noqa: B018 (each property loads its checkpoint once)
    _public_map()
    examples = sorted(p for p in EXAMPLES_DIR.iterdir() if p.is_dir()) if EXAMPLES_DIR.exists() else []
    if examples:
        images = load_folder(examples[0]).images
        method = get_method(FLAGSHIP)
        result = run_method(method, images, method.config_cls(epsilon=1.0, samples=WARM_SAMPLES), m)
        _owner_agreement(result.samples, images)
    release_memory()  # the pass's buffers back to the system before the first visitor's run is measured against them
    gc.freeze()


def launch(**kwargs):
    from ..memory import limit_arenas

    limit_arenas()  # before Gradio starts its worker threads (memory.py: the per-run peaks)
    prepare_temp_dir()
    warm_up()
    demo = build_demo()
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio reads them).
    return demo.launch(max_file_size=f"{MAX_FILE_MB}mb", css=CSS, **kwargs)
