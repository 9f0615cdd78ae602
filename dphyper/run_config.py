"""The options every private run shares (data, budget, sampling, output), below the methods and the engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from .privacy import DEFAULT_DELTA, check_epsilon_delta


@dataclass
class PrivateRunConfig:
    """Options every private run shares (hypernetwork and DP-SGD): data, budget, sampling, output."""

    images: Path = field(default=Path("private"), metadata={"help": "folder of private images"})
    epsilon: float = field(default=1.0, metadata={"help": "privacy budget of the run ('inf' = no privacy)"})
    delta: float = field(default=DEFAULT_DELTA, metadata={"help": "delta of the run; keep it below 1/n"})
    samples: int = field(default=16, metadata={"help": "number of images to sample with the method's adapter"})
    steps: int = field(default=25, metadata={"help": "DDIM sampling steps"})
    seed: int | None = field(default=None, metadata={"help": "seed of the *sampling* noise only (never the privacy noise)"})
    out: Path = field(default=Path("out"), metadata={"help": "output folder (the adapter file, samples/, grid.png, report.json)"})
    # Settings added after cells were stored, at the value that runs exactly the code that ran before (same draws,
    # same release): a stored cell's identity leaves them out at that value, so adding one stales nothing.
    NEUTRAL: ClassVar[dict] = {}

    def settings(self) -> dict:
        """Every setting, less those at their ``NEUTRAL`` value: what a stored cell's identity hashes."""
        return {k: v for k, v in asdict(self).items() if k not in self.NEUTRAL or v != self.NEUTRAL[k]}

    def __post_init__(self) -> None:
        check_epsilon_delta(self.epsilon, self.delta)  # NaN included: never "not finite, so no privacy"
        if self.samples < 0 or self.steps < 1:
            raise ValueError("samples must be >= 0 and steps >= 1")
