"""Module-level task functions for test_executor (worker processes import them by name)."""

import os
from pathlib import Path


def square(x: int) -> dict:
    return {"x": x, "square": x * x}


def die_once(marker: str, x: int) -> dict:
    """Kills its own worker the first time it runs (the marker file records that it did), then succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    return {"x": x, "square": x * x, "retried": True}


def fail(x: int) -> dict:
    raise ValueError(f"cell {x} is broken")
