"""Public check of the hypernetwork's LoRA-strength rule at small epsilon (public-coats-100, train split only; 2 repeats).

Run: PYTHONPATH=. python scripts/hypernet_small_eps_check.py  (writes bench/hypernet_small_eps.json)."""
import json
from pathlib import Path
from dphyper.compare import SWEEP_SETS, build_set, run_cell
from dphyper.models import shared_models
s = SWEEP_SETS[0]
data = build_set(s, Path("bench")); models = shared_models()
out = {}
for eps in (0.5, 0.25):
    for name, hp in (("alpha1", {"lora_scale": 1.0}), ("alpha2-fixed", {"lora_scale": 2.0, "scale_by_signal": False}),
                     ("alpha2-signal", {"lora_scale": 2.0, "scale_by_signal": True})):
        for rep in range(2):
            c = run_cell("hypernet", eps, data, models, samples=128, steps=25, seed=rep, overrides=hp)
            out.setdefault(f"{eps}|{name}", []).append((round(c["fid"], 1), round(c["agreement"], 3), c.get("lora_scale")))
            print(eps, name, rep, round(c["fid"], 1), round(c["agreement"], 3), flush=True)
            Path("bench/hypernet_small_eps.json").write_text(json.dumps(out, indent=1))
