"""The targets the comparison is held to (F1, F2, P2 and P4 of DESIGN.md), computed from the stored cells: the
flagship against DP-SGD, the classic baseline, and DP-SGD's step cost against a non-private step."""

from __future__ import annotations

import numpy as np

from ..methods import FLAGSHIP
from ..methods.dpsgd import DPSGD


def targets(summary: dict, sets_info: dict, epsilons: tuple[float, ...]) -> dict:
    """F1, F2, P2 and P4 as measured (no judgement is hard-coded: each is computed here)."""
    f1_rows, f2_rows, p2_rows, p4_rows = [], [], [], []
    for s, m in summary.items():
        hyp, dp = m.get(FLAGSHIP, {}), m.get(DPSGD.name, {})
        for e in epsilons:
            k = str(e)
            if k in hyp and k in dp:
                ratio = hyp[k]["fid"] / dp[k]["fid"]
                f1_rows.append({"set": s, "epsilon": e, "hypernet_fid": hyp[k]["fid"], "dpsgd_fid": dp[k]["fid"],
                                "ratio": ratio, "below": ratio < 1, "ratio_ok": ratio <= 0.5 if e <= 1 else None})
                if sets_info.get(s, {}).get("n") == 1000:
                    p2_rows.append({"set": s, "epsilon": e, "ratio": dp[k]["seconds_to_lora"] /
                                    max(hyp[k]["seconds_to_lora"], 1e-9)})
        if sets_info.get(s, {}).get("n") == 1000 and "1.0" in hyp and "inf" in hyp:
            f2_rows.append({"set": s, "fid_eps1": hyp["1.0"]["fid"], "fid_inf": hyp["inf"]["fid"],
                            "relative": hyp["1.0"]["fid"] / hyp["inf"]["fid"] - 1})
    return {"F1": f1_rows, "F2": f2_rows, "P2": p2_rows, "P4": p4_rows}


def step_cost(res: dict) -> list[dict]:
    """P4: seconds per DP-SGD step / per non-private step, same set and batch size."""
    rows = []
    for c in res["cells"].values():
        if c["method"] != DPSGD.name:
            continue
        ref = [o for o in res["cells"].values() if o["method"] == "nonprivate" and o["set"] == c["set"]
               and o.get("batch_size") == c.get("batch_size")]
        if ref:
            rows.append({"set": c["set"], "epsilon": c["epsilon"], "ratio": c["seconds_per_step"] /
                         float(np.mean([o["seconds_per_step"] for o in ref]))})
    return rows
