"""Errors shared by every method."""


class Cancelled(RuntimeError):
    """Raised when the caller's cancel event is set; nothing is released."""
