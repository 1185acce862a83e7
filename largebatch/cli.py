"""`largebatch ...`: the only module that reads argv. Bad input -> one line on stderr, exit 2, no traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from largebatch.errors import EXIT_BAD_INPUT, BadInput


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML (see tune_spaces/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set optim.base_lr=0.1 or --set tuner.num_samples=2")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="largebatch", description=__doc__.split(":")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("validate", help="load and resolve a study without running anything")
    _study_args(p)
    p.add_argument("--workers", type=int, default=None, help="workers per trial (default: tuner.workers_per_trial)")

    p = sub.add_parser("train", help="run ONE trial (the study's base config, or --baseline) on Ray Train")
    _study_args(p)
    p.add_argument("--workers", type=int, default=None, help="DDP workers (default: tuner.workers_per_trial)")
    p.add_argument("--baseline", action="store_true", help="train the study's baseline config instead of base")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", default=None, help="checkpoint storage: a path or s3://bucket/prefix (default ./runs)")
    p.add_argument("--output-json", default=None, help="write the final metrics as JSON here")

    p = sub.add_parser("list", help="list the registered rules, schedules, optimizers, models and datasets")
    return ap


def cmd_validate(args) -> int:
    from largebatch.config import baseline_trial, load_study, parse_sets, resolve

    study = load_study(args.study, parse_sets(args.sets))
    workers = args.workers or study.tuner.workers_per_trial
    rows = [("base", resolve(study.base, workers, source=args.study).summary())]
    if study.baseline is not None:
        rows.append(("baseline", resolve(baseline_trial(study, args.study), workers, source=args.study,
                                         prefix="baseline.").summary()))
    print(f"study {study.name!r} ({args.study}): valid")
    for label, summary in rows:
        print(f"  {label}:")
        for k, v in summary.items():
            print(f"    {k:<18} {v:.6g}" if isinstance(v, float) else f"    {k:<18} {v}")
    if study.search:
        print(f"  search: {', '.join(f'{k} {v}' for k, v in study.search.items())}")
    return 0


def cmd_train(args) -> int:
    from largebatch.config import baseline_trial, load_study, parse_sets, resolve
    from largebatch.raylib import init_ray, shutdown_ray
    from largebatch.storage import resolve_storage
    from largebatch.train.trial import run_trial

    study = load_study(args.study, parse_sets(args.sets))
    cfg = baseline_trial(study, args.study) if args.baseline else study.base
    workers = args.workers or study.tuner.workers_per_trial
    res = resolve(cfg, workers, source=args.study, prefix="baseline." if args.baseline else "base.")
    storage = resolve_storage(args.storage)
    cpus = study.tuner.cpus_per_worker
    print(f"[largebatch] {study.name}: B={res.global_batch_size} ({workers} workers x {res.per_worker_batch}, "
          f"accum {res.grad_accum_steps}) rule={cfg.scaling.rule} peak_lr={res.peak_lr:.4g} "
          f"warmup={res.warmup_steps} steps, {res.total_steps} steps", flush=True)
    info = init_ray(args.address)
    if info["cpus"] < workers * cpus:
        raise BadInput(f"got {workers} workers x {cpus} CPUs, but the Ray cluster has {info['cpus']} CPUs; "
                       f"use --workers {max(1, info['cpus'] // cpus)} or a larger cluster", field="--workers")
    try:
        out = run_trial(res, run_name=f"train-{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
                        cpus_per_worker=cpus, use_gpu=study.tuner.use_gpu, max_failures=study.tuner.max_failures)
    finally:
        shutdown_ray()
    final = {k: v for k, v in out.items() if k != "history"}
    print("[largebatch] final: " + " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({**out, "resolved": res.summary()}, indent=2, default=str))
    return 0 if out["status"] in ("completed", "diverged", "stopped_early") else 1


def cmd_list(args) -> int:
    from largebatch.data import DATASETS
    from largebatch.models import MODELS
    from largebatch.optim import OPTIMIZERS
    from largebatch.scaling import RULES
    from largebatch.schedules import DECAYS, WARMUPS

    for title, reg in [("scaling rules", RULES), ("warmups", WARMUPS), ("decays", DECAYS),
                       ("optimizers", OPTIMIZERS), ("models", MODELS), ("datasets", DATASETS)]:
        print(f"{title}:\n{reg.describe()}")
    return 0


COMMANDS = {"validate": cmd_validate, "train": cmd_train, "list": cmd_list}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except BadInput as e:
        print(f"largebatch: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("largebatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
