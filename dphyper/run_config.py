"""The options every private run shares (data, budget, sampling, output), below the methods and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

    def __post_init__(self) -> None:
        check_epsilon_delta(self.epsilon, self.delta)  # NaN included: never "not finite, so no privacy"
        if self.samples < 0 or self.steps < 1:
            raise ValueError("samples must be >= 0 and steps >= 1")
