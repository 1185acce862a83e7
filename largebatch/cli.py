"""`largebatch ...`: the only module that reads argv. Bad input -> one line on stderr, exit 2, no traceback."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

from largebatch.errors import EXIT_BAD_INPUT, BadInput
from largebatch.redact import redact_text
from largebatch.storage import check_writable_dir, undo_preflight
from largebatch.vocab import OUTCOME_STATUSES


def _verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's and MLflow's own output (Tune's tables, Train's start-up, worker logs)")


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML (see tune_spaces/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set optim.base_lr=0.1 or --set tuner.num_samples=2")


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus a line and exits; bad flags are bad input like any other: one line, exit 2."""

    def error(self, message: str):
        raise BadInput(f"{message}; see `{self.prog} --help`")


def _workers(args, study) -> int:
    # `--workers 0` is an error (resolve() says so), not "use the default"
    return args.workers if args.workers is not None else study.tuner.workers_per_trial


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="largebatch", description=__doc__.split(":")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_run_parsers(sub)
    _add_other_parsers(sub)
    return ap


def _add_run_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    """validate, check, train, tune."""
    p = sub.add_parser("validate", help="load and resolve a study without running anything")
    _study_args(p)
    p.add_argument("--workers", type=int, default=None, help="workers per trial (default: tuner.workers_per_trial)")

    p = sub.add_parser("check", help="overfit one batch of the study's task here, in seconds (tune, train: first)")
    _study_args(p)

    p = sub.add_parser("train", help="run ONE trial (the study's base config, or --baseline) on Ray Train")
    _study_args(p)
    p.add_argument("--workers", type=int, default=None, help="DDP workers (default: tuner.workers_per_trial)")
    p.add_argument("--baseline", action="store_true", help="train the study's baseline config instead of base")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", default=None, help="checkpoint storage: a path or s3://bucket/prefix (default ./runs)")
    p.add_argument("--output-json", default=None, help="write the final metrics as JSON here")
    p.add_argument("--no-check", action="store_true", help="skip the task's overfit check (largebatch check)")
    _verbose_arg(p)

    p = sub.add_parser("tune", help="run a whole study on Ray Tune and print the report")
    _study_args(p)
    p.add_argument("--smoke", action="store_true", help="apply the study's smoke: block (a couple of minutes)")
    p.add_argument("--name", default=None, help="MLflow experiment name (default: the study's name)")
    p.add_argument("--storage", default=None, help="trial storage: a path or s3://bucket/prefix (default ./runs/ray)")
    p.add_argument("--mlflow", default=None,
                   help="tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", action="store_true",
                   help="continue this study's newest run (same --name/--storage/--mlflow) after its driver died: "
                        "finished trials are kept, unfinished ones resume from their checkpoints")
    p.add_argument("--extend", action="store_true",
                   help="add the trials this study file has and this study's newest completed run lacks (new batch "
                        "sizes, seeds, samples; same --name/--storage/--mlflow) under the same MLflow parent, and "
                        "rebuild the report over all of them; finished trials are never re-run")
    p.add_argument("--no-check", action="store_true", help="skip the task's overfit check (largebatch check)")
    _verbose_arg(p)


def _add_other_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    """probe, report, ui, data, list."""
    p = sub.add_parser("probe", help="measure the gradient noise scale B_noise on a short run of the baseline "
                                     "(in this process), print it and the around_critical grid, cache it for tune")
    _study_args(p)
    p.add_argument("--epochs", type=int, default=8, help="epochs to train (default 8; the last half are averaged)")
    p.add_argument("--train-subset", type=int, default=20000,
                   help="train on the first N examples (default 20000; 0: all of them)")
    p.add_argument("--ema", type=float, default=0.98, help="per-step EMA decay of the estimates (default 0.98)")
    p.add_argument("--batch", type=int, default=None,
                   help="probe batch, even (default: the baseline's, at least 256; LR by the sqrt rule from it)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the study's)")
    p.add_argument("--no-cache", action="store_true", help="do not write the estimate where tune reads it")

    p = sub.add_parser("report", help="rebuild a study's report from MLflow alone")
    p.add_argument("--mlflow", default=None, help="tracking URI (default as for tune)")
    p.add_argument("--experiment", required=True, help="the study's MLflow experiment name")
    p.add_argument("--run", default=None, help="parent run id (default: the latest study run)")
    p.add_argument("--out", default=None, help="also write report.json/md/html and plots to this folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")

    p = sub.add_parser("ui", help="start the MLflow UI on a free local port, opened on the latest study's runs")
    p.add_argument("--mlflow", default=None, help="tracking URI (default as for tune)")
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")

    p = sub.add_parser("data", help="move datasets: `data push NAME s3://bucket/prefix`")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    dp = dsub.add_parser("push", help="upload a dataset's files to S3 (fashion-mnist IDX files, digits, npz)")
    dp.add_argument("dataset")
    dp.add_argument("uri")
    dp.add_argument("--path", default=None, help="local folder/file (default: the dataset's default location)")

    p = sub.add_parser("list", help="list the registered tasks, rules, schedules, optimizers, models, datasets, "
                                    "searchers and schedulers")


def cmd_validate(args) -> int:
    from largebatch.check import check_models
    from largebatch.config import baseline_trial, check_search_resolves, load_study, parse_sets, resolve
    from largebatch.tune.searchers import trial_count

    study = load_study(args.study, parse_sets(args.sets))
    workers = _workers(args, study)
    rows = [("base", resolve(study.base, workers, source=args.study).summary())]
    if study.baseline is not None:
        rows.append(("baseline", resolve(baseline_trial(study, args.study), workers, source=args.study,
                                         prefix="baseline.").summary()))
    check_search_resolves(study, workers, args.study)
    check_models(study, args.study)
    lines = [f"study {study.name!r} ({args.study}): valid"]  # printed through redact_text: a URI may hold a password
    for label, summary in rows:
        lines += [f"  {label}:"] + [f"    {k:<18} {v:.6g}" if isinstance(v, float) else f"    {k:<18} {v}"
                                    for k, v in summary.items()]
    if study.search:  # a searched credential is its reference already (config/study.py hide_searched_credentials)
        lines.append(f"  search: {', '.join(f'{k} {v}' for k, v in study.search.items())}")
    print(redact_text("\n".join([*lines, f"  trials: {trial_count(study)}"])))
    return 0


def cmd_check(args) -> int:
    from largebatch.check import check_study
    from largebatch.config import load_study, parse_sets

    check_study(load_study(args.study, parse_sets(args.sets)), args.study)
    return 0


def _check_writable_file(path: str) -> None:
    """The folder of an output file exists and takes a file, checked without leaving anything behind."""
    folder = Path(path).resolve().parent
    if Path(path).is_dir():
        raise BadInput(f"{path!r} is a folder; give a file name, e.g. {path.rstrip('/')}/final.json",
                       field="--output-json")
    if not folder.is_dir():
        raise BadInput(f"folder {str(folder)!r} does not exist; create it or choose another --output-json",
                       field="--output-json")
    if not os.access(folder, os.W_OK):
        raise BadInput(f"cannot write to folder {str(folder)!r}; choose another --output-json", field="--output-json")


def cmd_train(args) -> int:
    from largebatch.config import baseline_trial, load_study, parse_sets, resolve
    from largebatch.check import check_study
    from largebatch.raylib import init_ray, preflight_ray, shutdown_ray
    from largebatch import quiet
    from largebatch.storage import preflight_storage, resolve_storage
    from largebatch.train.trial import fit_outcome, make_trainer
    from largebatch.train_progress import TrainProgress

    # as validate does, for the one trial `train` runs (the grid is `tune`'s: a subset may be smaller than its B)
    study = load_study(args.study, parse_sets(args.sets), resolved="trial", workers=args.workers)
    cfg = baseline_trial(study, args.study) if args.baseline else study.base
    workers = _workers(args, study)
    res = resolve(cfg, workers, source=args.study, prefix="baseline." if args.baseline else "base.")
    storage = resolve_storage(args.storage)
    # the same checks as `tune`, before Ray starts: a bad path must not cost a trial
    if args.output_json:
        _check_writable_file(args.output_json)
    if not args.no_check:  # a task that cannot overfit one batch: one line, exit 2, before Ray (largebatch/check.py)
        check_study(study, args.study, args.baseline, prefix="[largebatch] ")
    preflight_ray(args.address)  # a wrong token, ulimit -v or object-store size: before anything is written
    preflight_storage(storage)  # creates the storage folder: last, so a bad --output-json leaves nothing
    cpus = study.tuner.cpus_per_worker
    print(f"[largebatch] {study.name}: B={res.global_batch_size} ({workers} workers x {res.per_worker_batch}, "
          f"accum {res.grad_accum_steps}) rule={cfg.scaling.rule} peak_lr={res.peak_lr:.4g} "
          f"warmup={res.warmup_steps} steps, {res.total_steps} steps", flush=True)
    info = init_ray(args.address)
    try:  # the CPU check is inside: a BadInput here must still shut Ray down
        if info["cpus"] < workers * cpus:
            raise BadInput(f"got {workers} workers x {cpus} CPUs, but the Ray cluster has {info['cpus']} CPUs; "
                           f"use --workers {max(1, info['cpus'] // cpus)} or a larger cluster", field="--workers")
        with TrainProgress(f"B={res.global_batch_size} {cfg.scaling.rule}", res.epochs,
                           live=None if not quiet.is_verbose() else False) as progress:
            trainer = make_trainer(res, run_name=f"train-{study.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                   storage_path=storage, cpus_per_worker=cpus, use_gpu=study.tuner.use_gpu,
                                   max_failures=study.tuner.max_failures, callbacks=[progress.callback])
            out = fit_outcome(trainer)
    finally:
        if info["started"]:
            shutdown_ray()
    final = {k: v for k, v in out.items() if k not in ("history", "traceback", "reason")}
    print("[largebatch] final: " + " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()))
    if out.get("reason"):
        print(f"[largebatch] {out['status']}: {out['reason']}", file=sys.stderr)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({**out, "resolved": res.summary()}, indent=2, default=str))
    return 0 if out["status"] in OUTCOME_STATUSES else 1


def resume_command(args) -> str:
    """The exact `largebatch tune ... --resume` that continues this study (credentials in URIs redacted)."""
    from largebatch.redact import redact_uri

    parts = ["largebatch", "tune", args.study, *[x for s in args.sets for x in ("--set", s)]]
    if args.smoke:
        parts.append("--smoke")
    for flag in ("name", "storage", "mlflow", "address"):
        value = getattr(args, flag)
        if value:
            parts += [f"--{flag}", redact_uri(value)]
    return shlex.join([*parts, "--resume"])


def cmd_tune(args) -> int:
    from largebatch.config import load_study, parse_sets
    from largebatch.failures import verdict_exit
    from largebatch.tune.driver import run_study

    if args.name is not None:
        from largebatch.config import check_study_name

        try:
            check_study_name(args.name)
        except ValueError as e:
            raise BadInput(f"got {args.name!r}: {e}", field="--name") from None
    if args.resume and args.extend:
        raise BadInput("--resume continues a study whose driver died, --extend adds trials to a finished one; give "
                       "one of them", field="--extend")
    study = load_study(args.study, parse_sets(args.sets), smoke=args.smoke, resolved=True)  # all of validate's checks
    if not (args.no_check or args.resume):  # a resumed study was checked when it started (largebatch/check.py)
        from largebatch.check import check_study

        check_study(study, args.study, prefix="[largebatch] ")
    from largebatch.raylib import preflight_ray

    preflight_ray(args.address)  # a wrong token, ulimit -v or object-store size: before any run is created
    report = run_study(study, source=args.study, study_text=Path(args.study).read_text(), name=args.name,
                       storage=args.storage, mlflow_uri=args.mlflow, address=args.address, resume=args.resume,
                       resume_hint=resume_command(args), extend=args.extend)
    return verdict_exit(report)  # every trial failed, or the baseline did: exit 1, naming why (failures.py)


def cmd_probe(args) -> int:
    from largebatch.config import load_study, parse_sets
    from largebatch.config.critical import DEFAULT_FACTORS, around_factors, critical_grid
    from largebatch.probe import ProbeSettings, cache_path, format_estimate, run_probe, save_estimate
    from largebatch.tune.critical import batch_bounds

    if args.epochs < 2:
        raise BadInput(f"got {args.epochs}; the probe averages the last half of its epochs: use 2 or more",
                       field="--epochs")
    if args.train_subset < 0:
        raise BadInput(f"got {args.train_subset}; use 0 (all examples) or a positive count", field="--train-subset")
    if not 0 <= args.ema < 1:
        raise BadInput(f"got {args.ema}; use an EMA decay in [0, 1), e.g. 0.98", field="--ema")
    if args.batch is not None and (args.batch < 2 or args.batch % 2):
        raise BadInput(f"got {args.batch}; the probe splits each step into 2 micro-batches: use an even batch >= 2",
                       field="--batch")
    study = load_study(args.study, parse_sets(args.sets))
    est = run_probe(study, args.study, ProbeSettings(
        epochs=args.epochs, train_subset=args.train_subset, ema=args.ema, batch=args.batch, seed=args.seed))
    factors = around_factors(study.search) or list(DEFAULT_FACTORS)
    granularity, upper = batch_bounds(study)
    print(f"{study.name}: {format_estimate(est)}")
    print(f"  around_critical {factors} -> data.global_batch_size grid "
          f"{critical_grid(est['b_noise'], factors, granularity, upper)}")
    if not args.no_cache:
        path = cache_path(study, "runs", args.study)
        save_estimate(est, path)
        print(f"  cached for `largebatch tune`: {path}")
    return 0


def cmd_report(args) -> int:
    from largebatch.report import build_report, format_table, write_report
    from largebatch.records import find_study_run, records_from_mlflow
    from largebatch.tracking import resolve_tracking_uri

    if args.out:  # before MLflow is read: a bad --out costs nothing
        check_writable_dir(args.out, "--out")
    uri = resolve_tracking_uri(args.mlflow)
    exp_id, parent_id, options = find_study_run(uri, args.experiment, args.run)
    records = records_from_mlflow(uri, exp_id, parent_id)
    from largebatch.tune.throughput import logged_profile  # the study's isolated profile: the same speed axis

    report = build_report(records, **options, profile=logged_profile(uri, parent_id))
    report["study"] = {"name": args.experiment, "parent_run_id": parent_id, "experiment_id": exp_id,
                       "n_trials": len(records), **report["study"]}  # the HTML title; cost: report/verdict.py
    written = []
    if args.out:
        from largebatch.report.html import write_html

        written = write_report(report, records, Path(args.out))
        written.append(write_html(report, Path(args.out)))
    print(json.dumps(report, indent=2, default=str) if args.json else format_table(report))
    # where it went (stderr, so that --json stays one JSON document on stdout)
    if written:
        print(f"[largebatch] wrote {len(written)} files to {Path(args.out).resolve()}: "
              f"{', '.join(p.name for p in written)}", file=sys.stderr)
    else:
        print("[largebatch] printed only, nothing written: --out DIR writes report.json, report.md, report.html "
              "and the plots", file=sys.stderr)
    return 0


def cmd_ui(args) -> int:
    from largebatch.tracking import resolve_tracking_uri
    from largebatch.ui import run_ui

    if args.port is not None and not 0 < args.port < 65536:
        raise BadInput(f"got {args.port}: use a port between 1 and 65535, or leave --port out", field="--port")
    return run_ui(resolve_tracking_uri(args.mlflow), args.port)


def cmd_data(args) -> int:
    from largebatch.data.export import push_dataset

    keys = push_dataset(args.dataset, args.uri, args.path)
    from largebatch.redact import redact_uri

    print(f"uploaded {len(keys)} file(s) to {redact_uri(args.uri)}: {', '.join(k.rsplit('/', 1)[-1] for k in keys)}")
    return 0


def cmd_list(args) -> int:
    from largebatch.data import DATASETS
    from largebatch.models import MODELS
    from largebatch.optim import OPTIMIZERS
    from largebatch.registry import Registry
    from largebatch.scaling import RULES
    from largebatch.schedules import DECAYS, WARMUPS
    from largebatch.tasks import TASKS
    from largebatch.choices import SCHEDULERS, SEARCHERS

    registries: list[tuple[str, Registry[Any]]] = [
        ("tasks", TASKS), ("scaling rules", RULES), ("warmups", WARMUPS), ("decays", DECAYS),
        ("optimizers", OPTIMIZERS), ("models", MODELS), ("datasets", DATASETS), ("searchers", SEARCHERS),
        ("schedulers", SCHEDULERS)]
    for title, reg in registries:
        print(f"{title}:\n{reg.describe()}")
    return 0


COMMANDS = {"validate": cmd_validate, "check": cmd_check, "train": cmd_train, "tune": cmd_tune, "probe": cmd_probe,
            "report": cmd_report, "ui": cmd_ui, "data": cmd_data, "list": cmd_list}


def main(argv: Optional[list[str]] = None) -> int:
    from largebatch import interrupts, quiet
    from largebatch.failures import StudyAborted, signal_name
    from largebatch.redact import redact_text

    previous: dict = {}
    try:
        args = build_parser().parse_args(argv)
        if args.cmd in ("train", "tune", "ui"):  # they start servers: SIGTERM/SIGHUP must clean up like Ctrl-C
            previous = interrupts.install()
        if args.cmd in ("train", "tune", "report"):
            quiet.configure(getattr(args, "verbose", False))  # before Ray or MLflow is imported
        return COMMANDS[args.cmd](args)
    except BadInput as e:
        undo_preflight()  # a refused command leaves no folder behind (runs/ made by a preflight that passed)
        print(redact_text(f"largebatch: error: {e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except StudyAborted as e:
        print(redact_text(str(e)), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        import signal

        print(f"largebatch: interrupted by {signal_name(interrupts.received() or signal.SIGINT)}; the local Ray "
              f"head was stopped", file=sys.stderr)
        return interrupts.exit_code()
    finally:
        if previous:
            interrupts.restore(previous)


if __name__ == "__main__":
    sys.exit(main())
