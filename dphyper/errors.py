"""Errors shared by every method."""


class Cancelled(RuntimeError):
    """Raised when the caller's cancel event is set; nothing is released."""


class FailedAfterRelease(RuntimeError):
    """A run that made its DP release and then failed while post-processing it. Nothing of the release was shown,
    but it was computed: a caller that keeps a ledger records ``events`` all the same (conservative accounting:
    the failure, or its message, might depend on the release)."""

    def __init__(self, events: tuple, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.events = tuple(events)
