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


def warm_up() -> None:
    """Load every public model before serving, so the first user does not wait for it."""
    m = shared_models()
    m.unet, m.encoder, m.hypernet, m.evaluator  # noqa: B018 (each property loads its checkpoint once)
    _public_map()


def launch(**kwargs):
    from ..memory import limit_arenas

    limit_arenas()  # before Gradio starts its worker threads (memory.py: the per-run peaks)
    prepare_temp_dir()
    warm_up()
    demo = build_demo()
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio reads them).
    return demo.launch(max_file_size=f"{MAX_FILE_MB}mb", css=CSS, **kwargs)
