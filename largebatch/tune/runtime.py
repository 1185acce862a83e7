"""What every trial of a study shares (`StudyRuntime`), and how a Tune sample becomes a `TrialSpec`.

The driver builds one StudyRuntime (tune/driver.py) and hands it to each Tune trial (`tune.with_parameters`) and
to the console's progress callback; both turn a Tune sample `{arm, seed, overrides}` into the same TrialSpec.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from largebatch.config import apply_overrides, parse_trial, resolve
from largebatch.redact import reveal_credentials
from largebatch.train.spec import TrialSpec


def is_baseline_sample(config: Any) -> bool:
    """Whether a Tune sample `{arm, seed, overrides}` is a baseline trial (the scheduler and the stopper leave those
    to run their whole budget)."""
    return (config or {}).get("arm") == "baseline"


def trial_label(summary: dict[str, Any], arm: str, overrides: dict[str, Any], seed: int, n_seeds: int) -> str:
    """Readable child-run name, e.g. 'B=1024 linear warmup=2ep' (docs/design.md §2.4)."""
    w = summary["warmup_epochs"]
    parts = [f"B={summary['global_batch_size']}", summary["rule"], f"warmup={w:g}ep"]
    for key, value in overrides.items():
        if key in ("data.global_batch_size", "scaling.rule", "schedule.warmup_epochs"):
            continue
        short = key.split(".")[-1]
        if isinstance(value, dict):  # a whole block searched (e.g. optim): its name says which
            value = value.get("name") or value
        parts.append(f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}")
    if n_seeds > 1:
        parts.append(f"seed={seed}")
    label = " ".join(parts)
    return f"baseline {label}" if arm == "baseline" else label


@dataclass(frozen=True)
class StudyRuntime:
    base_tree: dict
    baseline_tree: dict
    source: str
    seeds: tuple[int, ...]
    workers_per_trial: int
    cpus_per_worker: int
    use_gpu: bool
    max_failures: int
    train_sizes: dict[int, int]        # training examples of the base data, per data.train_subset (0: all)
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_name: str
    storage_path: str
    placement_strategy: str = "PACK"   # SPREAD on a multi-node cluster
    in_process: bool = False           # 1-worker trials train in Tune's trial process (train/inprocess.py)
    cwd: str = ""                      # the driver's folder: a searched relative path is made absolute against it
    # reference -> credential of the searched values (StudyConfig.credentials(), redact.py): Tune's configs hold
    # the references; the trial's config gets the real strings here, in the trial's process
    credentials: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def train_size(self, cfg) -> int:
        """Training examples this trial runs on. The driver counted them for the base task and data (per subset);
        a trial that searches the task, dataset or path counts its own, so what is logged is what the worker runs."""
        from largebatch.tasks import task_of, train_size

        base = self.base_tree
        same = (cfg.task.model_dump(mode="json") == base["task"] and cfg.data.dataset == base["data"]["dataset"]
                and cfg.data.path == base["data"]["path"])
        subset = cfg.data.train_subset or 0
        if same and subset in self.train_sizes:
            return self.train_sizes[subset]
        n = train_size(task_of(cfg), cfg)
        if subset > n:
            from largebatch.errors import BadInput

            raise BadInput(f"got {subset}, more than the {n} training examples of this trial's data; use at most "
                           f"{n}", field="data.train_subset")
        return subset or n

    def trial_spec(self, sample: dict[str, Any]) -> tuple[TrialSpec, dict[str, Any]]:
        """A Tune sample -> (its TrialSpec, resolved once, and the searched overrides)."""
        arm, seed = sample.get("arm", "search"), int(sample.get("seed", 0))
        overrides = dict(sample.get("overrides") or {})
        tree = self.baseline_tree if arm == "baseline" else self.base_tree
        tree = apply_overrides(tree, {**reveal_credentials(overrides, self.credentials), "seed": seed})
        if self.cwd:  # base and baseline were made absolute on the driver; a searched path is made so here
            from largebatch.tasks.build import absolute_paths

            tree = absolute_paths(tree, self.cwd)
        cfg = parse_trial(tree, source=self.source, prefix="baseline." if arm == "baseline" else "search.")
        res = resolve(cfg, self.workers_per_trial, train_size=self.train_size(cfg), source=self.source)
        return TrialSpec(res=res, arm=arm, cpus_per_worker=self.cpus_per_worker, use_gpu=self.use_gpu), overrides

    def label(self, spec: TrialSpec, overrides: dict[str, Any]) -> str:
        # a confirmation trial (tune/stopper.py: the leader again on another seed) is named with its seed
        return trial_label(spec.res.summary(), spec.arm, overrides if spec.arm == "search" else {},
                           spec.cfg.seed, len(self.seeds) if spec.cfg.seed in self.seeds else 2)
