"""`python -m bench.run_all [--quick] [--only NAME ...]`: run the benchmarks, write bench/results/<name>.json and
bench/results/summary.md (the table the README quotes).

--quick runs small sizes (minutes, for the smoke test and a first look) and writes to bench/results/quick/ unless
--results-dir says otherwise, so it never overwrites the full results.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from bench import common

# Order matters: the in-process benchmarks run first, before any Ray child has started on the machine.
BENCHMARKS = {
    "loop_overhead": "bench.loop_overhead",
    "check_cost": "bench.check_cost",  # issue #30: the overfit check / one baseline run
    "data_path": "bench.data_path",
    "loader_path": "bench.loader_path",
    "scaling": "bench.scaling",
    "embedded_head": "bench.embedded_head",
    "ray_overhead": "bench.ray_overhead",
    "search_efficiency": "bench.search_efficiency",
    "epoch_cost": "bench.epoch_cost",
    "demo_study": "bench.demo_study",
    "time_to_accuracy": "bench.time_to_accuracy",  # after demo_study: it times the recipe that study recommends
    "study_cost": "bench.study_cost",  # issue #26: the budgeted study beside the exhaustive grid
    "cluster_scale": "bench.cluster_scale",  # issue #27: 10/50/100 trials on 4 loopback nodes, MLflow on PostgreSQL
}
# --no-ray skips these; scaling drops 2 workers
NEEDS_RAY = ("embedded_head", "ray_overhead", "time_to_accuracy", "search_efficiency", "epoch_cost", "demo_study",
             "study_cost", "cluster_scale")

# Issue #14's goal table ("Cheap trials"): (key of the figure rows that answer it, figure, before, goal). A figure
# row carries the key (common.figure(..., key=...)); several rows with one key (the loop at three batch sizes) are
# shown together and meet the goal only if each does.
GOALS = [
    ("demo_share", "training seconds / trial-seconds, `make demo` study (tune_spaces/fashion-mnist.yaml)", "0.40",
     ">= 0.85"),
    ("demo_over_ideal", "`make demo` study wall-clock / (sum of training seconds / concurrent slots)", "3.2", "<= 1.3"),
    ("startup_share", "start-up / whole trial, 2-worker digits smoke trial", "0.53", "<= 0.30"),
    ("asha_vs_grid", "early-stopping search trial-seconds / grid trial-seconds, same space (searched trials; the "
                     "baseline alike in both): successive halving, tuner.scheduler sha (ASHA's figure is a contrast "
                     "row)", "1.41 (ASHA)", "<= 0.40"),
    ("asha_gap", "grid best - successive halving's best (points)", "0.93 (ASHA)", "<= 0.3"),
    ("loop", "loop / hand-written loop, B=32 / 256 / 2048", "0.88 / 0.96 / 0.94", ">= 0.97 each"),
    ("epoch_fixed", "per-epoch fixed cost (eval + checkpoint + report) / epoch training time, 4,000-example dataset "
                    "with a 1,000-example validation subset, B=1024 (MLP, 30 epochs)", "about 8", "<= 0.5"),
    ("study_confirmed", "budgeted study: the recommendation confirmed on a second seed (reached the target 2/2)",
     "not measured", "n of n"),
]


def run_one(name: str, *, quick: bool, results_dir: Path, options: Optional[dict] = None) -> dict[str, Any]:
    module = importlib.import_module(BENCHMARKS[name])
    started = time.time()
    payload: dict[str, Any] = {
        "benchmark": name,
        "about": (module.__doc__ or "").strip().splitlines()[0],
        "quick": quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": common.machine_info(),
    }
    print(f"[bench] {name}{' (quick)' if quick else ''} ...", flush=True)
    try:
        payload.update(module.run(quick=quick, **(options or {})))
    except Exception as e:  # one broken benchmark must not lose the others' results
        payload["error"] = f"{type(e).__name__}: {e}"
        payload["traceback"] = traceback.format_exc().splitlines()[-20:]
        payload.setdefault("summary", [common.figure("(failed)", None, goal="", shown=f"error: {type(e).__name__}")])
    payload["duration_s"] = time.time() - started
    payload["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    path = common.write_result(name, payload, results_dir)
    print(f"[bench] {name}: {payload['duration_s']:.0f} s -> {path}", flush=True)
    for row in payload.get("summary", []):
        print(f"    {row['figure']}: {row['measured']}  (goal {row['goal'] or '-'})", flush=True)
    return payload


def summary_markdown(results_dir: Path) -> str:
    """One table over every <name>.json present (so `--only X` refreshes X and keeps the others' rows)."""
    import json

    payloads = []
    for name in BENCHMARKS:
        p = results_dir / f"{name}.json"
        if p.is_file():  # a benchmark run on its own (python -m bench.X) writes no run_all payload: named here
            payloads.append({"benchmark": name, **json.loads(p.read_text())})
    lines = goals_markdown(payloads) + ["", "All figures:", ""]
    lines += ["| benchmark | figure | goal | measured | met |", "| --- | --- | --- | --- | --- |"]
    for pl in payloads:
        for row in pl.get("summary", []):
            met = {True: "yes", False: "**no**", None: "-"}[row.get("met")]
            lines.append(f"| {pl['benchmark']}{' (quick)' if pl.get('quick') else ''} | {row['figure']} | "
                         f"{row['goal'] or '-'} | {row['measured']} | {met} |")
    machines = {(m["nproc"], m["cpu_model"], m["torch"], m["ray"]) for m in (pl["machine"] for pl in payloads)}
    lines.append("")
    for nproc, cpu, torch_v, ray_v in sorted(machines, key=str):
        lines.append(f"Machine: {nproc} CPUs (`nproc`), {cpu}; torch {torch_v}, ray {ray_v}. Every figure is a "
                     f"ratio against a reference measured in the same run (alternated repetitions, medians).")
    dates = sorted(pl["started_at"] for pl in payloads if "started_at" in pl)
    loads = [v for pl in payloads for k, v in pl["machine"].items() if k.startswith("load_avg")]
    if dates:
        lines.append(f"Benchmarks started between {dates[0]} and {dates[-1]}; the 1-minute load average of the shared "
                     f"machine ranged {min(loads):.1f}-{max(loads):.1f} during them. Details: "
                     f"bench/results/<benchmark>.json.")
    return "\n".join(lines) + "\n"


def goals_markdown(payloads: list[dict]) -> list[str]:
    """The issue's goal table, filled from the figure rows that carry its keys."""
    lines = ["Goals of issue #14 (cheap trials):", "",
             "| figure | before | goal | measured | met | benchmark |", "| --- | --- | --- | --- | --- | --- |"]
    for key, name, before, goal in GOALS:
        rows = [(pl, row) for pl in payloads for row in pl.get("summary", []) if row.get("key") == key]
        if not rows:
            lines.append(f"| {name} | {before} | {goal} | not run | - | - |")
            continue
        measured = " / ".join(row["measured"] for _, row in rows)
        mets = [row.get("met") for _, row in rows]
        met = "-" if any(m is None for m in mets) else "yes" if all(mets) else "**no**"
        benches = sorted({f"{pl['benchmark']}{' (quick)' if pl.get('quick') else ''}" for pl, _ in rows})
        lines.append(f"| {name} | {before} | {goal} | {measured} | {met} | {', '.join(benches)} |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # internal: a Ray benchmark's child process (common.run_child)
        return common.child_main(*argv[1:4])
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: minutes, not the hour of a full run")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help=f"run only this benchmark (repeatable, or comma-separated): {', '.join(BENCHMARKS)}")
    ap.add_argument("--no-ray", action="store_true",
                    help="in-process benchmarks only (loop_overhead, data_path, loader_path, scaling at 1 worker)")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="where the JSON and summary.md go (default bench/results, or bench/results/quick with "
                         "--quick)")
    args = ap.parse_args(argv)
    names = [n for item in args.only for n in item.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.no_ray:
        names = [n for n in names if n not in NEEDS_RAY]
    results_dir = args.results_dir or (common.RESULTS_DIR / "quick" if args.quick else common.RESULTS_DIR)
    failed = []
    for name in names:
        options = {"ray": False} if args.no_ray and name == "scaling" else None
        if name == "time_to_accuracy":
            options = {"results_dir": results_dir}
        if "error" in run_one(name, quick=args.quick, results_dir=results_dir, options=options):
            failed.append(name)
    summary = results_dir / "summary.md"
    summary.write_text(summary_markdown(results_dir))
    print(f"[bench] summary: {summary}\n" + summary.read_text(), flush=True)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
