"""The privacy ledger of one browser: every release, counted against every image it used.

What counts as "the same data": releases are tracked **per image**, not per folder. Each
decoded image gets a fingerprint (a keyed hash of its pixels after decoding); a release is
recorded once, with the fingerprints of the images it used. The total shown for a folder is
the composed cost of the releases that touched its **most-exposed image**. So the same files
in another order, under other names, inside a bigger folder, or mixed with new images all
keep their history; an image that is changed pixel for pixel after decoding is a new image.

Why per image: under add/remove-one adjacency the guarantee is about one person's image.
Every release that used that image adds to its privacy loss, whatever else was in the
folder, so the per-image maximum is what a data subject should read.

What is kept: fingerprints are HMAC-SHA256 with a key drawn at process start and never
written, so they cannot be checked against a guessed image outside this process; no
pixels, names or counts are stored. A book lives in the tab's session, in memory only (never
on disk): a page reload, closing the tab or an hour idle starts a new one. Identical images
in one upload are dropped before any release (``drop_duplicates``), so "one image" is one
record of every release that used it. ``LedgerBook`` is mutated in place under its own lock: two runs that
finish together (a DP-SGD run and a hypernetwork release on the same images) both land.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
from dataclasses import dataclass

import torch

from .privacy import PrivacyEvent, PrivacyLedger, check_registered

_KEY = secrets.token_bytes(32)  # per process, never written anywhere


def _keys(images: torch.Tensor) -> list[bytes]:
    x = images.detach().to(torch.float32).cpu().contiguous()
    return [hmac.new(_KEY, x[i].numpy().tobytes(), hashlib.sha256).digest()[:16] for i in range(x.shape[0])]


def drop_duplicates(images: torch.Tensor) -> tuple[torch.Tensor, frozenset[bytes], int]:
    """Keep the first of identical images (pixels after decoding): the ledger counts an image once,
    so a release must use it once too (k copies would move the sum by k times the sensitivity).

    Returns the kept images, their fingerprints (as ``image_fingerprints`` gives them) and how
    many copies were dropped: one hashing pass for both.
    """
    seen: set[bytes] = set()
    keep = []
    for i, k in enumerate(_keys(images)):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return images[keep], frozenset(seen), images.shape[0] - len(keep)


def image_fingerprints(images: torch.Tensor) -> frozenset[bytes]:
    """Order-free identity of a set of decoded images (callers drop duplicates first)."""
    return frozenset(_keys(images))


@dataclass(frozen=True)
class LedgerRow:
    """One release as the owner sees it, with how many of the current images it used."""

    event: PrivacyEvent
    method: str
    shared: int  # images of the current folder that this release used
    of: int  # images in the current folder


@dataclass(frozen=True)
class LedgerView:
    rows: tuple[LedgerRow, ...]
    epsilon: float  # composed, for the most-exposed image of the current folder
    delta: float
    how: str  # how it was composed, in words


class LedgerBook:
    """Every release one browser made, each with the images it used (in memory, under a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[PrivacyEvent, str, frozenset[bytes]]] = []

    def __deepcopy__(self, memo: dict) -> "LedgerBook":
        # Gradio deep-copies a State's initial value per session; a lock cannot be copied.
        other = LedgerBook()
        with self._lock:
            other._entries = list(self._entries)
        return other

    def record(self, images: frozenset[bytes], event: PrivacyEvent, method: str) -> None:
        check_registered(event)  # refused now, not when the ledger is shown
        with self._lock:
            self._entries.append((event, method, images))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def view(self, images: frozenset[bytes]) -> LedgerView:
        """The releases that touched any of ``images`` and the total for the most-exposed one."""
        with self._lock:
            entries = list(self._entries)
        touching = [(i, e, m, len(ims & images)) for i, (e, m, ims) in enumerate(entries) if ims & images]
        rows = tuple(LedgerRow(event=e, method=m, shared=k, of=len(images)) for _, e, m, k in touching)
        if not touching:
            return LedgerView(rows=(), epsilon=0.0, delta=0.0, how="nothing released yet")
        # Group the current images by the set of releases that used them; compose each group once.
        signatures: set[tuple[int, ...]] = set()
        for fp in images:
            signatures.add(tuple(i for i, _, _, _ in touching if fp in entries[i][2]))
        # One delta for every image (the largest any touching release used), so that the epsilons of
        # the groups are comparable and the maximum is a true (epsilon, delta) statement for each image.
        delta = max(entries[i][0].delta for i, _, _, _ in touching)
        best, best_how = 0.0, ""
        for sig in signatures:
            if not sig:
                continue
            ledger = PrivacyLedger()
            for i in sig:
                ledger.record(entries[i][0])
            eps, _ = ledger.total(delta=delta)
            if eps >= best or not best_how:
                best, best_how = eps, ledger.method()
        return LedgerView(rows=rows, epsilon=best, delta=delta, how=best_how)


def total_text(view: LedgerView) -> str:
    eps = "∞ (a non-private run)" if math.isinf(view.epsilon) else f"{view.epsilon:.3g}"
    return f"ε = {eps}, δ = {view.delta:g}"
