"""What every room of the app shares: settings, the hosted mode, and errors a page may show (never a path)."""

from __future__ import annotations

from pathlib import Path
import gradio as gr
import os
import re
import threading

from ..config import EXAMPLES_DIR
from ..config import REPO_DIR
from ..models import shared_models


def UserError(message: str) -> gr.Error:  # noqa: N802 - used like the exception class it returns
    """A message for the person at the page only: Gradio prints a gr.Error's traceback and message to the
    server log by default, and these messages can name private files or the folder's size."""
    return gr.Error(message, print_exception=False)

TEMP_DIR = Path(os.environ.get("DPHYPER_TEMP_DIR", REPO_DIR / ".gradio_tmp"))
MAX_FILE_MB = 10
MAX_IMAGES = 2000
SESSION_TTL_S = 3600  # decoded images are dropped from a session idle this long


def hosted_mode() -> str:
    """``DPHYPER_HOSTED``: "" (default, run by the data owner), "warn" (a public server: uploads come
    with a prominent warning) or "examples" (a public server: uploads off, example sets only)."""
    mode = os.environ.get("DPHYPER_HOSTED", "").strip().lower()
    if mode in ("", "0", "off", "false"):
        return ""
    if mode in ("1", "on", "true", "warn"):
        return "warn"
    if mode in ("examples", "no-uploads"):
        return "examples"
    raise ValueError(f"DPHYPER_HOSTED must be empty, warn or examples, got {mode!r}")


HOSTED_WARNING = (
    "⚠️ **This is a hosted demo.** Differential privacy protects the people in your images from what the "
    "*outputs* reveal (LoRA, samples, report), not from this server: whoever runs it can see what you "
    "upload. Use the example sets here, and for truly private images run dphyper on your own machine "
    "(two commands, see the README).")

_lock = threading.RLock()  # re-entrant: the PCA map loads the encoder under it
_models: dict[str, object] = {}



def _evaluator():
    return shared_models().evaluator


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir()) if EXAMPLES_DIR.exists() else []


def public_error(exc: BaseException) -> str:
    """An exception's message for the page: absolute paths cut to their last part, no traceback."""
    text = _PATH_RE.sub(lambda m: m.group(1) or "…", str(exc))
    return text[:300]


_PATH_RE = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/](?:[^\\/\s'\"<>|:]+[\\/])+([^\\/\s'\"<>|:]*)")
