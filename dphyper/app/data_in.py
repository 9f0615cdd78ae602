"""Data in: example sets and uploads, decoded once and deleted; thumbnails as inline images."""

from __future__ import annotations

from pathlib import Path
import gradio as gr
import threading

from ..config import EXAMPLES_DIR
from ..ledger import drop_duplicates
from .budget import methods_plan
import dphyper.app.common as common  # the module: tests replace TEMP_DIR and MAX_IMAGES there
from .common import UserError, hosted_mode, public_error
from .figures import default_curve_set, privacy_summary


# ---------------------------------------------------------------- data in




def _delete_uploads(paths: list[Path]) -> None:
    """Uploaded files are decoded once; then they leave the server's disk."""
    for p in paths:
        try:
            if common.TEMP_DIR.resolve() in p.resolve().parents:
                p.unlink(missing_ok=True)
                if p.parent != common.TEMP_DIR and not any(p.parent.iterdir()):
                    p.parent.rmdir()
        except OSError:
            pass


def load_data(example: str | None, files: list | None = None, folder: list | None = None):
    """Decode the chosen data into the session; returns (data, overview markdown, thumbnails)."""

    from ..data import DataError, load_folder, load_images

    uploaded = [Path(getattr(f, "name", f)) for f in (files or []) + (folder or [])]
    if uploaded and hosted_mode() == "examples":  # the API too, not only the hidden components
        _delete_uploads(uploaded)
        raise UserError("Uploads are switched off on this hosted demo: choose an example set.")
    if len(uploaded) > common.MAX_IMAGES:  # refuse before decoding anything
        _delete_uploads(uploaded)
        raise UserError(f"{len(uploaded)} files is over the limit of {common.MAX_IMAGES} images per upload: "
                       "nothing was decoded and the files were deleted.")
    try:
        if uploaded:
            loaded = load_images(uploaded, max_images=common.MAX_IMAGES)
            source = f"your upload ({len(uploaded)} file{'s' * (len(uploaded) != 1)})"
        elif example:
            loaded = load_folder(EXAMPLES_DIR / example)
            source = f"example set “{example}”"
        else:
            raise DataError("Choose an example set or upload images first.")
    except DataError as exc:
        raise UserError(public_error(exc)) from None
    finally:
        _delete_uploads(uploaded)
    # "The same data" for the ledger is per image (dphyper.ledger): order, names and other images don't matter.
    # An image counts once: identical copies are dropped before any release can use them twice.
    images, fingerprints, dupes = drop_duplicates(loaded.images)
    data = {"images": images, "fingerprints": fingerprints, "n": len(images), "source": source}
    lines = [f"**{len(images)} images** from {source}."]
    if dupes:
        lines.append(f"{dupes} identical duplicate image{'s' * (dupes != 1)} dropped: each image counts once.")
    if uploaded:
        lines.append("The uploaded files were decoded and deleted from the server; the images stay in this "
                     "browser session only.")
    if loaded.rejected:
        lines.append(f"Skipped {len(loaded.rejected)} file(s):")
        lines += [f"- `{name}`: {why}" for name, why in loaded.rejected[:20]]
        if len(loaded.rejected) > 20:
            lines.append(f"- … and {len(loaded.rejected) - 20} more")
    return data, "\n".join(lines), thumbnails_html(images[:24])


def thumbnails_html(images) -> str:
    """Private thumbnails as an inline data URI: they go to the owner's page and never to disk."""
    import base64
    import io

    from PIL import Image

    from ..data import make_grid

    grid = make_grid(images, ncol=12)
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    return (f'<img alt="your images (first {len(images)})" src="data:image/png;base64,{b64}" '
            'style="image-rendering: pixelated; max-width: 100%;">')


def _after_load(data: dict, log_eps: float, no_privacy: bool, delta: float, max_steps: int) -> tuple:
    """What depends on n: the privacy summary, the DP-SGD plan, the benchmark set shown."""
    return (privacy_summary(log_eps, no_privacy, delta, data["n"]),
            methods_plan(data, log_eps, no_privacy, delta, max_steps), gr.update(value=default_curve_set(data["n"])))


# Loads run in order within a session (an upload right after the page opens must not be overwritten by the initial
# example load) but never wait for another session's load: a server-wide slot made a visitor's wait the rest of
# another visitor's decoding and plan, which grow with that visitor's n (issue 37).
_LOAD_LOCKS: dict[str, threading.Lock] = {}
_LOAD_LOCKS_GUARD = threading.Lock()


def _load_lock(request: gr.Request | None) -> threading.Lock:
    key = getattr(request, "session_hash", None) or "no-session"
    with _LOAD_LOCKS_GUARD:
        return _LOAD_LOCKS.setdefault(key, threading.Lock())


def load_example(example: str | None, log_eps: float = 0.0, no_privacy: bool = False, delta: float = 1e-5,
                 max_steps: int = 0, request: gr.Request = None):
    with _load_lock(request):
        data, overview, thumbs = load_data(example)
        return data, overview, thumbs, *_after_load(data, log_eps, no_privacy, delta, max_steps)


def load_upload(files: list | None, folder: list | None, log_eps: float = 0.0, no_privacy: bool = False,
                delta: float = 1e-5, max_steps: int = 0, request: gr.Request = None):
    """Upload handler: loads the files and clears the upload boxes (the files are gone)."""
    if not files and not folder:
        return (gr.skip(),) * 9
    with _load_lock(request):
        data, overview, thumbs = load_data(None, files, folder)
        return (data, overview, thumbs, *_after_load(data, log_eps, no_privacy, delta, max_steps), None, None,
                gr.update(value=None))
