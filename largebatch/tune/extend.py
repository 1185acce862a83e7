"""`largebatch tune STUDY.yaml --extend` (docs/design.md §12): add batch sizes, seeds or samples to the newest study
of that name (same --name/--storage/--mlflow) without re-running what it finished.

The study file is read again and its trials listed as the searcher would run them (baseline × seeds, then every
grid/random point × seeds). A trial whose arm and whole trial config (seed included) match a child run of the
study's parent with a final status (completed, diverged, stopped_early, failed) is kept as it is, read from MLflow;
the others run as a new Tune run (a new run folder `<name>-<stamp>`) whose child runs join the same parent, and the
report is rebuilt from all the parent's child runs. The parent's `run_name` tag moves to the new folder, so
`--resume` continues an extension whose driver died, and the next `--extend` finds it.

Only the list searchers (grid, random: seeded, so the first N samples of a longer random search are the same) can
be extended; optuna's suggestions depend on its history and are not a list.
"""
from __future__ import annotations

from typing import Any

from largebatch.config import StudyConfig, apply_overrides, flatten, parse_trial
from largebatch.errors import BadInput
from largebatch.redact import reveal_credentials
from largebatch.vocab import Status

EXTENDABLE_SEARCHERS = ("grid", "random")


def find_extendable(storage_path: str, exp_name: str, tracking_uri: str) -> dict[str, str]:
    """The newest run of study `exp_name` under the storage and its MLflow parent run, which must have completed;
    BadInput (exit 2) when there is nothing to extend."""
    from largebatch.tracking import STATUS_TAG
    from largebatch.tune.study_runs import _run_folders, study_parent

    hint = "check --name, --storage and --mlflow, or drop --extend to start a new study"
    folders = _run_folders(storage_path, exp_name)
    if not folders:
        raise BadInput(f"nothing to extend: no run of study {exp_name!r} under {storage_path}; {hint}",
                       field="--extend")
    run_name = folders[0][0]
    exp, runs = study_parent(tracking_uri, exp_name, run_name)
    if not runs:
        raise BadInput(f"nothing to extend: no MLflow study run tagged run_name={run_name!r} in {tracking_uri}; "
                       f"{hint}", field="--extend")
    status = runs[0].data.tags.get(STATUS_TAG)
    if status != Status.COMPLETED:
        raise BadInput(f"nothing to extend yet: study run {run_name!r} (parent run {runs[0].info.run_id}) did not "
                       f"complete (status {status or Status.RUNNING.value}); finish it with --resume, then --extend",
                       field="--extend")
    return {"run_name": run_name, "parent_id": runs[0].info.run_id, "experiment_id": exp.experiment_id}


def _points(study: StudyConfig) -> list[dict[str, Any]]:
    from largebatch.tune.searchers import grid_points, random_points

    if study.tuner.searcher not in EXTENDABLE_SEARCHERS:
        raise BadInput(f"--extend lists the study's trials, which searcher {study.tuner.searcher!r} cannot; use "
                       f"searcher grid or random, or start a new study", field="tuner.searcher")
    if study.tuner.searcher == "grid":
        return grid_points(study) * study.tuner.num_samples
    return random_points(study, study.tuner.num_samples, seed=study.base.seed)


def study_trials(study: StudyConfig, base_tree: dict, baseline_tree: dict, source: str) -> list[dict[str, Any]]:
    """Every trial the study runs, as the searcher suggests them: {"arm", "overrides", "seed"}, in order."""
    seeds = list(study.tuner.seeds)
    items = [{"arm": "baseline", "overrides": {}, "seed": s} for s in seeds] if study.baseline is not None else []
    items += [{"arm": "search", "overrides": dict(p), "seed": s} for p in _points(study) for s in seeds]
    secrets = study.credentials()  # searched credentials are references here; the runs logged the real values
    for item in items:  # the trial config, as tune/runtime.py trial_spec builds it
        tree = baseline_tree if item["arm"] == "baseline" else base_tree
        overrides = reveal_credentials(item["overrides"], secrets)
        cfg = parse_trial(apply_overrides(tree, {**overrides, "seed": item["seed"]}), source=source,
                          prefix="baseline." if item["arm"] == "baseline" else "search.")
        item["_params"] = _as_logged(flatten(cfg.model_dump(mode="json")))
    return items


def _as_logged(flat: dict[str, Any]) -> dict[str, str]:
    from largebatch.tracking import safe_params

    return safe_params(flat)  # what the child run's params hold: strings, secrets dropped, capped


def finished_runs(tracking_uri: str, exp_id: str, parent_id: str) -> list:
    from largebatch.tracking import FINAL_STATUSES, STATUS_TAG, RunTree

    runs = RunTree(tracking_uri).children(exp_id, parent_id)
    return [r for r in runs if r.data.tags.get(STATUS_TAG) in FINAL_STATUSES]


def new_trials(items: list[dict[str, Any]], finished: list) -> tuple[list[dict[str, Any]], int]:
    """(the trials no finished child run holds, how many are kept): a run holds a trial when its arm and every
    logged config param match. A param the run lacks matches an unset ("None") value: a setting added to the schema
    since (e.g. data.eval_subset), whose unset default is what the run did."""
    done = [(r.data.params.get("arm"), r.data.params) for r in finished]
    new, kept = [], 0
    for item in items:
        params = item["_params"]
        if any(arm == item["arm"] and all(p.get(k, "None") == v for k, v in params.items()) for arm, p in done):
            kept += 1
        else:
            new.append({k: v for k, v in item.items() if k != "_params"})
    return new, kept


def extension_searcher(study: StudyConfig, base_tree: dict, baseline_tree: dict, source: str, tracking_uri: str,
                       target: dict[str, str]):
    """(searcher over the new trials only, their number); BadInput when every trial already finished."""
    from largebatch.tune.space import ListSearcher

    items = study_trials(study, base_tree, baseline_tree, source)
    new, kept = new_trials(items, finished_runs(tracking_uri, target["experiment_id"], target["parent_id"]))
    if not new:
        raise BadInput(f"nothing to extend: all {kept} trial(s) of this study already finished in parent run "
                       f"{target['parent_id']}; add batch sizes or other values under search:, seeds under "
                       f"tuner.seeds or samples with tuner.num_samples", field="--extend")
    print(f"[largebatch] extending study run {target['run_name']!r} (parent run {target['parent_id']}): {kept} "
          f"finished trial(s) kept from MLflow, {len(new)} new", flush=True)
    return ListSearcher(new, study.tuner.metric, study.tuner.mode), len(new)


def reopen_parent(tracker, target: dict[str, str], run_name: str, study_text: str, stamp: str) -> None:
    """The parent runs again, under the extension's run folder; the study file of each extension is kept."""
    from largebatch.tracking import RUN_NAME_TAG, STATUS_TAG

    tracker.reopen(target["parent_id"])
    tracker.set_tag(target["parent_id"], STATUS_TAG, Status.RUNNING.value)
    tracker.set_tag(target["parent_id"], RUN_NAME_TAG, run_name)
    tracker.log_text(target["parent_id"], study_text, f"extensions/study-{stamp}.yaml")
