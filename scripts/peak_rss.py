"""Peak RSS of one method's run in a process like the app's (gradio and the app module imported, the public models
loaded): `python scripts/peak_rss.py sparse 64 [max_steps]` prints the MB before the run and the peak after it.

Issue 37's memory check (target: every method within 1.5 GB at n = 64 and n = 200); numbers in docs/BENCHMARKS.md.
"""

import resource
import sys

import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def main() -> None:
    name, n = sys.argv[1], int(sys.argv[2])
    max_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    import dphyper.app  # noqa: F401  (the app's process: gradio and every app module loaded)
    from dphyper.config import EXAMPLES_DIR
    from dphyper.data import load_folder
    from dphyper.methods import get_method, run_method
    from dphyper.models import shared_models

    models = shared_models(torch.device("cpu"))
    for part in ("unet", "encoder", "hypernet", "evaluator"):
        getattr(models, part, None)
    images = torch.cat([load_folder(EXAMPLES_DIR / s).images for s in ("bags", "trousers")])[:n]
    method = get_method(name)
    kw = {"epsilon": 1.0, "samples": 16}
    if "max_steps" in method.config_cls.__dataclass_fields__:
        kw["max_steps"] = max_steps
    before = rss_mb()
    run_method(method, images, method.config_cls(**kw), models)
    print(f"{name} n={n}: {before:.0f} MB before the run, peak {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
