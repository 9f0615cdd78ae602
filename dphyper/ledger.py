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
pixels, names or counts are stored. Books live in memory only (never on disk) and go when
the server restarts. ``LedgerBook`` is mutated in place under its own lock: two runs that
finish together (a DP-SGD run and a hypernetwork release on the same images) both land.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .privacy import PrivacyEvent, PrivacyLedger

_KEY = secrets.token_bytes(32)  # per process, never written anywhere


def image_fingerprints(images: torch.Tensor) -> frozenset[bytes]:
    """Order-free identity of a set of decoded images (the multiset's distinct members)."""
    x = images.detach().to(torch.float32).cpu().contiguous()
    return frozenset(hmac.new(_KEY, x[i].numpy().tobytes(), hashlib.sha256).digest()[:16]
                     for i in range(x.shape[0]))


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
        best, best_how = (0.0, 0.0), ""
        for sig in signatures:
            if not sig:
                continue
            ledger = PrivacyLedger()
            for i in sig:
                ledger.record(entries[i][0])
            eps, delta = ledger.total()
            if (eps, delta) > best or not best_how:
                best, best_how = (eps, delta), ledger.method()
        return LedgerView(rows=rows, epsilon=best[0], delta=best[1], how=best_how)


class LedgerBooks:
    """One ``LedgerBook`` per browser token, at most ``capacity`` of them (least recently used go)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._books: OrderedDict[str, LedgerBook] = OrderedDict()
        self.capacity = capacity

    def get(self, token: str) -> LedgerBook:
        with self._lock:
            book = self._books.get(token)
            if book is None:
                book = self._books[token] = LedgerBook()
                while len(self._books) > self.capacity:
                    self._books.popitem(last=False)
            self._books.move_to_end(token)
            return book


def total_text(view: LedgerView) -> str:
    eps = "∞ (a non-private run)" if math.isinf(view.epsilon) else f"{view.epsilon:.3g}"
    return f"ε = {eps}, δ = {view.delta:g}"
