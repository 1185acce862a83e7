"""Scaling: steady-state examples/s vs global batch size (16 ... 4096) at 1 and 2 workers.

1 worker runs the real loop in this process (no Ray); 2 workers run through Ray Train (`run_trial`, gloo DDP,
1 CPU and 1 BLAS thread each) in a child process, and their throughput comes from the trial history. Each
trial trains on min(60000, max(16384, 64 x B)) examples for 4 epochs; the median over epochs 2-4 counts. The
1-worker curve alternates the sizes round-robin over 3 rounds (medians); each 2-worker Ray trial runs once, paired
with an in-process 1-worker run of the same trial right beside it (same child process) for the 2w/1w ratio.

The figures are ratios: examples/s at B over examples/s at B=16 (what vectorisation buys), 2 workers over 1 worker
at the same B, and the batch at which examples/s first reaches 90% of its best (where vectorisation stops paying).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from bench import common

if TYPE_CHECKING:
    from largebatch.config import TrialConfig

NAME = "scaling"
BATCHES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
QUICK_BATCHES = (16, 256, 2048)
KNEE = 0.9  # "stops paying": the first batch whose examples/s is within 10% of the best


def train_subset(B: int, quick: bool) -> Optional[int]:
    n = min(4096, max(1024, 8 * B)) if quick else min(60000, max(16384, 64 * B))
    return None if n >= 60000 else n


def trial_overrides(B: int, quick: bool) -> dict[str, Any]:
    return {"data.global_batch_size": B, "data.train_subset": train_subset(B, quick),
            "budget.epochs": 2 if quick else 4}


def knee(rows: list[dict], key: str) -> Optional[int]:
    vals = [(r["global_batch_size"], r[key]) for r in rows if r.get(key)]
    if not vals:
        return None
    best = max(v for _, v in vals)
    return next(B for B, v in vals if v >= KNEE * best)


def child_two_workers(spec: dict) -> dict[str, Any]:
    """In a fresh process: one local Ray, then per batch size a 2-worker Ray trial paired with an in-process
    1-worker run of the same trial, right before or after it (the order alternates), for the 2w/1w ratio."""
    from largebatch.config import resolve
    from largebatch.train.trial import run_trial

    ray_info = common.start_ray()
    common.set_threads()
    storage = common.short_tmpdir()
    out = []

    def two(cfg: TrialConfig, B: int, pair: dict[str, Any]) -> None:
        r = run_trial(resolve(cfg, 2), run_name=f"bench-scaling-{B}-{time.time_ns()}", storage_path=storage)
        pair.update(status=r["status"], startup_s=r.get("startup_s"), fit_s=r.get("fit_s"),
                    epoch_throughputs=[h["throughput"] for h in r["history"]],
                    throughput=common.steady_throughput(r["history"]) if r["history"] else None)

    def one(cfg: TrialConfig, B: int, pair: dict[str, Any]) -> None:
        pair["throughput_1w"] = common.steady_throughput(common.run_in_process(cfg))

    for i, B in enumerate(spec["batches"]):
        cfg = common.trial_config(trial_overrides(B, spec["quick"]))
        pair: dict[str, Any] = {}
        for step in ((one, two) if i % 2 == 0 else (two, one)):
            step(cfg, B, pair)
        out.append({"global_batch_size": B, **pair})
    return {"ray": ray_info, "trials": out}


def run(quick: bool = False, ray: bool = True) -> dict[str, Any]:
    batches = QUICK_BATCHES if quick else BATCHES
    rounds = 1 if quick else 3
    common.set_threads()
    per = common.alternate({
        B: (lambda B=B: common.steady_throughput(common.run_in_process(common.trial_config(trial_overrides(B, quick)))))
        for B in batches}, rounds)
    rows = [{"global_batch_size": B, "train_subset": train_subset(B, quick), "examples_per_s_1w": common.median(v),
             "rounds_1w": v} for B, v in per.items()]
    two = None
    if ray:
        two = common.run_child("bench.scaling:child_two_workers", {"batches": list(batches), "quick": quick},
                               timeout_s=600 if quick else 1500, log_name="scaling")
        for row, t in zip(rows, two["trials"]):
            row["examples_per_s_2w"] = t["throughput"]
            row["status_2w"] = t["status"]
            row["examples_per_s_1w_paired"] = t["throughput_1w"]
            # paired: the in-process run beside this very trial, in the same child, not the parent's curve
            row["two_vs_one_worker"] = common.ratio(t["throughput"] or float("nan"), t["throughput_1w"])
    ref = rows[0]
    for row in rows:
        row["vs_B16_1w"] = common.ratio(row["examples_per_s_1w"], ref["examples_per_s_1w"])
        if ray:
            row["vs_B16_2w"] = common.ratio(row["examples_per_s_2w"] or float("nan"), ref["examples_per_s_2w"] or 0)
    knee_1w, knee_2w = knee(rows, "examples_per_s_1w"), knee(rows, "examples_per_s_2w") if ray else None
    lo, hi = rows[0], rows[-1]
    summary = [
        common.figure(f"examples/s B={hi['global_batch_size']} / B={lo['global_batch_size']}, 1 worker",
                      hi["vs_B16_1w"], unit="x"),
        common.figure(f"batch reaching {KNEE:.0%} of best examples/s, 1 worker", knee_1w,
                      shown=f"B={knee_1w}"),
    ]
    if ray:
        summary += [
            common.figure(f"examples/s B={hi['global_batch_size']} / B={lo['global_batch_size']}, 2 workers (Ray)",
                          hi.get("vs_B16_2w"), unit="x"),
            common.figure(f"batch reaching {KNEE:.0%} of best examples/s, 2 workers", knee_2w,
                          shown=f"B={knee_2w}"),
            common.figure(f"2 workers / 1 worker examples/s, B={lo['global_batch_size']}", lo.get("two_vs_one_worker"),
                          unit="x"),
            common.figure(f"2 workers / 1 worker examples/s, B={hi['global_batch_size']}", hi.get("two_vs_one_worker"),
                          unit="x"),
        ]
    return {
        "settings": {"dataset": "fashion-mnist", "model": "mlp 256-128", "threads_per_worker": common.THREADS,
                     "one_worker": "in-process loop, round-robin over batches", "rounds_1w": rounds,
                     "two_workers": "Ray Train run_trial (gloo), once per batch" if ray else "skipped (--no-ray)",
                     "epochs": 2 if quick else 4, "steady_state": "median over the epochs after the first",
                     "two_vs_one": "2-worker Ray trial / an in-process 1-worker run of the same trial beside it"},
        "rows": rows,
        "knee_1w": knee_1w,
        "knee_2w": knee_2w,
        "ray": two["ray"] if two else None,
        "two_worker_trials": two["trials"] if two else None,
        "summary": summary,
    }
