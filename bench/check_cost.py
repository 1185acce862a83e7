"""The overfit check's cost (issue #30; largebatch/check.py): `largebatch check` on the demo study
(tune_spaces/fashion-mnist.yaml) as a share of one baseline run of that study. Goal: < 5%.

Both run in this process with one BLAS thread (the check takes the study's `tuner.cpus_per_worker`, 1 here; a trial
worker has the same):
- the check: `check_study(study)` as `tune` and `train` call it, data build included (the driver builds the data for
  the check alone). The first call is the cold one a study pays (the data file's first read, torch's first kernels);
  the later rounds are reported beside it. Each round is a fresh load of the study file.
- the baseline run: the study's baseline trial through the real loop (`train_worker`, 1 worker, no Ray), its data
  build included, for the study's whole budget (--quick: 1 epoch, projected to the budget by the epochs).
Wall-clock and process CPU time for each: on a shared machine the CPU ratio is the steadier one. The machine's load
average is recorded at the start and the end.

    python -m bench.check_cost            # full: the baseline's 10 epochs, ~20-60 s
    python -m bench.check_cost --quick    # 1 epoch, projected
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench import common

NAME = "check_cost"
GOAL = 0.05
ROUNDS = 3


def _timed(fn) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run(quick: bool = False) -> dict[str, Any]:
    from largebatch.check import check_study
    from largebatch.config import baseline_trial, load_study, parse_sets

    common.set_threads()
    start_load = os.getloadavg()[0]
    source = str(common.STUDY_FILE)
    checks = []
    for _ in range(ROUNDS):
        results, wall, cpu = _timed(lambda: check_study(load_study(source), source, echo=lambda line: None))
        r = results[0]
        checks.append({"wall_s": wall, "cpu_s": cpu, "data_s": r.data_s, "steps": r.steps, "examples": r.examples,
                       "loss_start": r.loss_start, "loss_end": r.loss_end, "line": r.line()})

    study = load_study(source)
    epochs = 1 if quick else study.base.budget.epochs
    cfg = baseline_trial(load_study(source, parse_sets([f"budget.epochs={epochs}"])), source)

    def baseline() -> list[dict]:
        return common.run_in_process(cfg, common.dataset(cfg.data.dataset, cfg.data.train_subset, cfg.seed))

    history, wall, cpu = _timed(baseline)
    scale = study.base.budget.epochs / epochs
    base = {"wall_s": wall * scale, "cpu_s": cpu * scale, "epochs_run": epochs, "projected": scale != 1,
            "global_batch_size": cfg.data.global_batch_size, "steps": history[-1]["steps"] * scale,
            "final_val_acc": history[-1].get("val_acc")}
    cold = checks[0]
    share_wall, share_cpu = cold["wall_s"] / base["wall_s"], cold["cpu_s"] / base["cpu_s"]
    summary = [
        common.figure("check wall-clock / baseline run wall-clock (cold check)", share_wall, goal=f"< {GOAL:g}",
                      met=share_wall < GOAL),
        common.figure("check CPU / baseline run CPU (cold check)", share_cpu, goal=f"< {GOAL:g}", met=share_cpu < GOAL),
        common.figure("check wall-clock, warm rounds (median)", common.median(c["wall_s"] for c in checks[1:]),
                      unit="s"),
        common.figure("check wall-clock, cold", cold["wall_s"], unit="s"),
        common.figure("baseline run wall-clock", base["wall_s"], unit="s"),
    ]
    return {"benchmark": NAME, "about": __doc__.split("\n\n")[0], "quick": quick,
            "machine": {**common.machine_info(), "load_avg_1m": start_load, "load_avg_1m_end": os.getloadavg()[0]},
            "settings": {"study": "tune_spaces/fashion-mnist.yaml", "rounds": ROUNDS, "threads": common.THREADS},
            "summary": summary, "checks": checks, "baseline": base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="time 1 baseline epoch and project it to the budget")
    args = ap.parse_args()
    out = run(args.quick)
    path = common.write_result(NAME, out, common.RESULTS_DIR / "quick" if args.quick else common.RESULTS_DIR)
    for f in out["summary"]:
        print(f)
    print(out["checks"][0]["line"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
