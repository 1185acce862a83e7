"""The one typed, strict config, and `resolve()`: the ONE place derived values are computed.

A study YAML has blocks `base:` (a TrialConfig), `search:` (dotted keys -> domains), `tuner:`, `baseline:`
(dotted overrides of base) and `report:`. Dicts exist only at the YAML and Ray boundaries; everything else reads
attributes. Unknown keys, wrong types and impossible values are `BadInput` naming the file and dotted path.

Units are batch-size invariant: LR is "per base_batch_size examples"; warmup and milestones are in
epochs or examples. `resolve(num_workers)` turns them into steps for one concrete global batch.
"""
from __future__ import annotations

import bisect
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from largebatch.errors import BadInput, did_you_mean


MAX_EPOCHS = 100_000  # bounds what resolve() and a trial may be asked to plan


class _Strict(BaseModel):
    # strict: no "16" -> 16 coercion; forbid: unknown keys are errors; frozen: nobody mutates a config downstream;
    # no inf/nan: a non-finite LR or epoch count is never a setting
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class _StudyLoader(yaml.SafeLoader):
    """YAML as people write numbers: PyYAML's YAML 1.1 rules read `1e-3` and `1.5e3` as strings (they want a dot
    and a signed exponent); here they are floats, as in YAML 1.2 and every other tool."""


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml_text(text: str) -> Any:
    """The one YAML reader for studies and --set values, so both read `1e-3` the same way."""
    return yaml.load(text, Loader=_StudyLoader)  # a SafeLoader: no Python objects


# ---------------------------------------------------------------- the trial config (`base:`)
class DataConfig(_Strict):
    dataset: str = "fashion-mnist"
    path: Optional[str] = None  # local folder / .npz file / s3:// prefix; None = the dataset's default location
    train_subset: Optional[int] = Field(None, gt=0)  # first N of a seeded permutation, for quick runs
    global_batch_size: int = Field(16, gt=0, le=2**24)  # examples per optimizer step, over all workers and micro-steps
    # memory cap on one forward pass; forces accumulation. "auto": each worker finds the largest micro-batch that fits
    # before training (on a GPU: halve until no out-of-memory error; on a CPU: within auto_memory_mb of activations)
    per_worker_batch_cap: Union[Annotated[int, Field(gt=0)], Literal["auto"], None] = None
    auto_memory_mb: Optional[float] = Field(None, gt=0)  # the CPU budget for `auto`: tensors saved for backward
    grad_accum_steps: Optional[int] = Field(None, gt=0)  # explicit accumulation; None = derived from the cap
    eval_batch_size: int = Field(4096, gt=0)
    loader_workers: int = Field(0, ge=0)  # DataLoader processes for a task whose data is a torch Dataset


class ModelConfig(_Strict):
    name: str = "mlp"
    hidden_sizes: list[Annotated[int, Field(gt=0)]] = [256, 128]  # mlp
    depth: int = Field(20, gt=0)  # resnet: 6n+2
    width: int = Field(16, gt=0)  # resnet base width
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    factory: Optional[str] = None  # "package.module:function" for a user model (name: factory)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to the user factory
    ghost_batch_size: Optional[int] = Field(None, ge=2)  # ghost batch norm (Hoffer et al. 2017); BN models only


class OptimConfig(_Strict):
    name: str = "sgd"
    base_lr: float = Field(0.01, gt=0.0)  # the LR at base_batch_size examples per step
    base_batch_size: int = Field(16, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(1e-8, gt=0.0)
    trust_coefficient: float = Field(0.001, gt=0.0)  # LARS eta
    grad_clip_norm: Optional[float] = Field(None, gt=0.0)


class ScalingConfig(_Strict):
    rule: str = "none"
    alpha: float = 0.5  # exponent of the `power` rule


class BatchRampConfig(_Strict):
    """Grow the batch instead of decaying the LR (Smith et al. 2018, arXiv 1711.00489): B *= factors[i] at epoch
    milestones[i]. The LR follows the scaling rule for each phase's batch (rule none: the LR is held, Smith's recipe);
    the examples budget (epochs) is unchanged, so later phases take fewer steps."""

    milestones: list[Annotated[int, Field(gt=0, le=MAX_EPOCHS)]] = Field([], max_length=100)  # whole epochs at which the global batch grows
    factors: list[Annotated[float, Field(gt=0.0)]] = []  # batch multiplier per milestone (1 = no change)
    grow: Literal["batch", "accum"] = "batch"  # batch: the micro-batch grows (the cap forces accumulation);
    #                                            accum: the micro-batch stays, accumulation multiplies (flat memory)


class ScheduleConfig(_Strict):
    warmup: str = "linear"
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS)
    warmup_examples: Optional[int] = Field(None, ge=0)  # alternative to warmup_epochs
    warmup_start_factor: float = Field(0.1, gt=0.0, le=1.0)
    decay: str = "constant"
    milestones: list[Annotated[float, Field(gt=0.0, le=MAX_EPOCHS)]] = Field([], max_length=100)  # epochs, for decay: step
    gamma: float = Field(0.1, gt=0.0)
    min_lr_factor: float = Field(0.0, ge=0.0, le=1.0)
    batch_ramp: BatchRampConfig = BatchRampConfig()


class BudgetConfig(_Strict):
    epochs: float = Field(10.0, gt=0.0, le=MAX_EPOCHS)  # the examples budget: epochs x train size, whatever the batch
    max_steps: Optional[int] = Field(None, gt=0, le=10**9)  # optional steps budget (cuts the examples budget short)
    target_val_acc: Optional[float] = Field(None, gt=0.0, le=1.0)
    stop_at_target: bool = False
    divergence_loss: float = Field(100.0, gt=0.0)  # a train loss above this marks the trial diverged


class CheckpointConfig(_Strict):
    every_epochs: int = Field(1, gt=0)
    num_to_keep: int = Field(2, gt=0)


class InstrumentsConfig(_Strict):
    """Diagnostics logged per epoch (largebatch/instruments/). Off where they cost time."""

    grad_noise_scale: bool = False  # B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018), no extra backward
    noise_scale_ema: float = Field(0.95, ge=0.0, lt=1.0)  # EMA decay per optimizer step of |G|^2 and tr(Sigma)
    sharpness: bool = False  # top Hessian eigenvalue at the end (Keskar et al. 2016), power iteration on HVPs
    sharpness_every_epochs: Optional[int] = Field(None, gt=0)  # also every K epochs
    sharpness_probe_size: int = Field(1024, gt=0)  # examples in the fixed probe batch (seeded, same for all B)
    sharpness_iters: int = Field(50, gt=0)  # power iterations at most (stops at 1e-4 relative change)
    trust_ratio: bool = True  # LARS/LAMB per-layer trust ratio min/median/max per epoch (one sync per epoch)


class TaskConfig(_Strict):
    """The workload (largebatch/tasks, docs/tasks.md): a registered task or 'package.module:function' (user code,
    imported and run on the driver and every worker), called with `kwargs`."""

    name: str = "classification"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TrialConfig(_Strict):
    seed: int = 0
    task: TaskConfig = TaskConfig()
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 only on GPU
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    budget: BudgetConfig = BudgetConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    instruments: InstrumentsConfig = InstrumentsConfig()


# ---------------------------------------------------------------- the study (`search:`, `tuner:`, ...)
class TunerConfig(_Strict):
    metric: str = "val_acc"  # any quality metric the task reports (val_loss, val_<metric>, ...)
    mode: Optional[Literal["max", "min"]] = None  # None: the metric's own direction
    searcher: str = "grid"
    scheduler: str = "fifo"
    grace_period_epochs: int = Field(1, gt=0)  # asha
    reduction_factor: float = Field(2.0, gt=1.0)  # asha
    num_samples: int = Field(1, gt=0)  # grid: repeats of the grid; random/optuna: samples
    max_concurrent: Optional[int] = Field(None, gt=0)
    workers_per_trial: int = Field(1, gt=0)
    cpus_per_worker: int = Field(1, gt=0)
    use_gpu: bool = False
    seeds: list[int] = Field([0], min_length=1)
    max_failures: int = Field(2, ge=0)  # Train FailureConfig: worker restarts from the last checkpoint
    time_budget_s: Optional[float] = Field(None, gt=0)


class ReportConfig(_Strict):
    tolerance: float = Field(0.5, ge=0.0)  # how much worse than the baseline still counts as "safe", in:
    # points (1/100 of the metric: accuracy points), absolute (the metric's units) or relative (a fraction of the
    # baseline's value); None: points for a `max` metric, absolute for a `min` one
    tolerance_units: Optional[Literal["points", "absolute", "relative"]] = None


class SmokeConfig(_Strict):
    base: dict[str, Any] = Field(default_factory=dict)  # dotted overrides of base and baseline
    search: dict[str, Any] = Field(default_factory=dict)  # replaces these search entries
    tuner: dict[str, Any] = Field(default_factory=dict)


class StudyConfig(_Strict):
    name: str
    description: str = ""
    base: TrialConfig = TrialConfig()
    search: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tuner: TunerConfig = TunerConfig()
    baseline: Optional[dict[str, Any]] = None  # dotted overrides of base: the small-batch reference
    report: ReportConfig = ReportConfig()
    smoke: SmokeConfig = SmokeConfig()

    @field_validator("name")
    @classmethod
    def _name_ok(cls, name: str) -> str:
        # a field validator, so the error names `name` (a model validator's error has no field path)
        return check_study_name(name)


# A study name becomes a folder name, an MLflow experiment name and part of MLflow filter strings: letters,
# digits and . _ - only (no quotes, slashes or spaces), checked once here for every use.
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_study_name(name: str) -> str:
    if not name.strip():
        raise ValueError("name must not be empty")
    if not STUDY_NAME.match(name):
        raise ValueError(f"study names are 1-100 letters, digits, '.', '_' or '-', starting with a letter or "
                         f"digit; e.g. {re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-._')[:100] or 'my-study'!r}")
    return name


# ---------------------------------------------------------------- dotted keys and errors
def set_dotted(tree: dict, dotted: str, value: Any) -> dict:
    """Return a copy of nested dict `tree` with `a.b.c` set to value."""
    out = dict(tree)
    head, _, rest = dotted.partition(".")
    if rest:
        sub = out.get(head)
        out[head] = set_dotted(sub if isinstance(sub, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def get_dotted(tree: dict, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and tuples stay values."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _model_fields(model: type[BaseModel], path: tuple) -> list[str]:
    """Valid keys at `path` inside `model` (for did-you-mean)."""
    cls: Any = model
    for part in path:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = field.annotation
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
    return list(getattr(cls, "model_fields", {}))


def _pydantic_to_bad_input(err: ValidationError, model: type[BaseModel], source: str, prefix: str) -> BadInput:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    path = prefix + ".".join(str(p) for p in loc)
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        valid = _model_fields(model, loc[:-1])
        msg = f"unknown key {loc[-1]!r}{did_you_mean(loc[-1], valid)}; valid keys here: {', '.join(valid)}"
    elif e["type"] == "missing":
        msg = "is required; add it"
    else:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = f"got {shown}: {e['msg'][0].lower() + e['msg'][1:]}"
    return BadInput(msg, source=source, field=path)


def _parse(model: type[BaseModel], data: Any, source: str, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _pydantic_to_bad_input(err, model, source, prefix) from None


def parse_trial(data: dict, source: str = "<config>", prefix: str = "base.") -> TrialConfig:
    cfg = _parse(TrialConfig, data, source, prefix)
    check_names(cfg, source, prefix)
    return cfg


def check_names(cfg: TrialConfig, source: str, prefix: str = "base.") -> None:
    """Registry names are checked here, before any trial starts (imports stay light: registries only)."""
    from largebatch.errors import unknown_choice
    from largebatch.scaling import RULES
    from largebatch.schedules import DECAYS, WARMUPS
    from largebatch.optim import OPTIMIZERS
    from largebatch.models import MODELS
    from largebatch.data import DATASETS

    checks = [
        ("scaling.rule", cfg.scaling.rule, RULES, "scaling rule"),
        ("schedule.warmup", cfg.schedule.warmup, WARMUPS, "warmup"),
        ("schedule.decay", cfg.schedule.decay, DECAYS, "decay"),
        ("optim.name", cfg.optim.name, OPTIMIZERS, "optimizer"),
        ("model.name", cfg.model.name, MODELS, "model"),
        ("data.dataset", cfg.data.dataset, DATASETS, "dataset"),
    ]
    for field, value, registry, kind in checks:
        if value not in registry:
            raise BadInput(unknown_choice(kind, value, registry.names()), source=source, field=prefix + field)
    if cfg.model.name == "factory" and not cfg.model.factory:
        raise BadInput("model 'factory' needs model.factory: 'package.module:function'", source=source,
                       field=prefix + "model.factory")
    if cfg.model.name == "resnet" and (cfg.model.depth - 2) % 6:
        raise BadInput(f"got {cfg.model.depth}: resnet depth must be 6n+2 (20, 32, 56)", source=source,
                       field=prefix + "model.depth")
    if cfg.schedule.warmup_examples is not None and cfg.schedule.warmup_epochs:
        raise BadInput("give warmup_epochs or warmup_examples, not both", source=source,
                       field=prefix + "schedule.warmup_examples")
    if cfg.schedule.decay == "step" and not cfg.schedule.milestones:
        raise BadInput("decay 'step' needs schedule.milestones (epochs), e.g. [5, 8]", source=source,
                       field=prefix + "schedule.milestones")
    ramp = cfg.schedule.batch_ramp
    if len(ramp.milestones) != len(ramp.factors):
        raise BadInput(f"got {len(ramp.factors)} factors for {len(ramp.milestones)} milestones; give one factor per "
                       f"milestone, e.g. milestones: [3, 6], factors: [4, 4]", source=source,
                       field=prefix + "schedule.batch_ramp.factors")
    if list(ramp.milestones) != sorted(set(ramp.milestones)) or (ramp.milestones and
                                                                 ramp.milestones[-1] >= cfg.budget.epochs):
        raise BadInput(f"got {list(ramp.milestones)}: milestones must be strictly increasing whole epochs before the "
                       f"end of budget.epochs={cfg.budget.epochs:g}", source=source,
                       field=prefix + "schedule.batch_ramp.milestones")
    if cfg.data.dataset == "npz" and not cfg.data.path:
        raise BadInput("dataset 'npz' needs data.path: a .npz file with x_train, y_train, x_test, y_test",
                       source=source, field=prefix + "data.path")


# ---------------------------------------------------------------- resolve(): every derived value, once
class Phase(_Strict):
    """A stretch of constant global batch: the whole run, or one step of `schedule.batch_ramp` (Smith et al.)."""

    start_epoch: int
    start_step: int  # the phase's first optimizer step
    global_batch_size: int
    per_worker_batch: int  # the micro-batch: examples in one forward pass of one worker
    grad_accum_steps: int
    steps_per_epoch: int
    peak_lr: float  # base_lr scaled by the rule for this phase's batch


class Resolved(_Strict):
    """A trial config plus everything derived from it for one worker count. Read-only downstream.
    The batch fields are the first phase's; `phases` has one entry per batch-ramp phase (one without a ramp)."""

    cfg: TrialConfig
    num_workers: int
    global_batch_size: int  # = per_worker_batch * num_workers * grad_accum_steps (docs/design.md §4)
    per_worker_batch: int  # examples in one forward pass of one worker (one micro-step)
    micro_batch: int  # the same number as per_worker_batch, under the name the loop's micro-steps use
    grad_accum_steps: int
    train_size: int  # examples in the (possibly subset) train split
    steps_per_epoch: int  # train_size // global_batch_size (drop_last: every step sees exactly B examples)
    examples_per_epoch: int
    epochs: int  # whole epochs run (ceil of budget.epochs, cut by max_steps)
    total_steps: int
    peak_lr: float  # base_lr scaled by the rule; the schedule multiplies it
    warmup_steps: int
    milestone_steps: tuple[int, ...]
    phases: tuple[Phase, ...]

    def phase_at_epoch(self, epoch: int) -> Phase:
        return next(p for p in reversed(self.phases) if p.start_epoch <= epoch)

    def phase_at_step(self, step: int) -> Phase:
        return next(p for p in reversed(self.phases) if p.start_step <= step)

    def examples_at(self, step: int) -> int:
        """Examples shown by the first `step` optimizer steps (step x B without a ramp)."""
        ends = [p.start_step for p in self.phases[1:]] + [step]
        return sum(max(0, min(step, end) - p.start_step) * p.global_batch_size for p, end in zip(self.phases, ends))

    def lr_at(self, step: int) -> float:
        from largebatch.schedules import lr_factor

        s = self.cfg.schedule
        return self.phase_at_step(step).peak_lr * lr_factor(
            step, self.total_steps, warmup=s.warmup, warmup_steps=self.warmup_steps,
            start_factor=s.warmup_start_factor, decay=s.decay, min_factor=s.min_lr_factor,
            milestones=self.milestone_steps, gamma=s.gamma,
        )

    def summary(self) -> dict[str, Any]:
        """The derived values a person checks before launching (and the ones logged as params)."""
        out = {
            "global_batch_size": self.global_batch_size,
            "num_workers": self.num_workers,
            "per_worker_batch": self.per_worker_batch,
            "micro_batch": self.micro_batch,
            "grad_accum_steps": self.grad_accum_steps,
            "train_size": self.train_size,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "total_steps": self.total_steps,
            "rule": self.cfg.scaling.rule,
            "base_lr": self.cfg.optim.base_lr,
            "base_batch_size": self.cfg.optim.base_batch_size,
            "peak_lr": self.peak_lr,
            "warmup_epochs": self.warmup_steps / self.steps_per_epoch,
            "warmup_steps": self.warmup_steps,
        }
        if len(self.phases) > 1:  # e.g. "256 x4 accum1 @0ep -> 1024 x4 accum1 @3ep"
            out["batch_ramp"] = " -> ".join(f"{p.global_batch_size} ({p.per_worker_batch}x{p.grad_accum_steps} "
                                            f"accum, lr {p.peak_lr:.4g}) @{p.start_epoch}ep" for p in self.phases)
        return out


def resolve(cfg: TrialConfig, num_workers: int, *, train_size: int | None = None,
            source: str = "<config>", prefix: str = "base.") -> Resolved:
    """Derive per-worker batch, accumulation, peak LR and step counts, for every batch-ramp phase. Anything
    impossible is BadInput."""
    from largebatch.scaling import scaled_lr

    d, s, b, ramp = cfg.data, cfg.schedule, cfg.budget, cfg.schedule.batch_ramp
    B = d.global_batch_size

    def bad(field: str, msg: str) -> BadInput:
        return BadInput(msg, source=source, field=prefix + field)

    if num_workers < 1:
        raise BadInput(f"got {num_workers} workers; use 1 or more", source=source, field="workers")

    # ---- the phases: (start epoch, global batch); a factor of 1 starts no phase. Batches must be whole numbers.
    starts, batches = [0], [B]
    for m, f in zip(ramp.milestones, ramp.factors):
        nxt = batches[-1] * f
        if abs(nxt - round(nxt)) > 1e-9:
            raise bad("schedule.batch_ramp.factors", f"factor {f:g} at epoch {m} makes a batch of {nxt:g} "
                                                     f"examples; pick factors that keep the batch whole")
        if round(nxt) != batches[-1]:
            starts.append(m)
            batches.append(int(round(nxt)))

    # "auto" is settled on the workers (train/microbatch.py), which resolve again with the number they found
    cap = d.per_worker_batch_cap if isinstance(d.per_worker_batch_cap, int) else None
    if d.per_worker_batch_cap == "auto" and d.grad_accum_steps is not None:
        raise bad("data.per_worker_batch_cap", "got 'auto' with data.grad_accum_steps set; give one of the two")

    def split(Bk: int, k: int) -> tuple[int, int]:
        """(micro-batch, accumulation steps) for phase k's global batch Bk."""
        where = "" if k == 0 else f"phase {k} (from epoch {starts[k]}, B={Bk}): "
        fld = (lambda name: name) if k == 0 else (lambda name: "schedule.batch_ramp.factors")
        if Bk % num_workers:
            raise bad(fld("data.global_batch_size"), f"{where}got {Bk}, which does not divide over {num_workers} "
                                                     f"workers; use a multiple of {num_workers}")
        per_worker = Bk // num_workers  # examples per worker per optimizer step, over all its micro-steps
        if k > 0 and ramp.grow == "accum":  # the first phase's micro-batch, more micro-steps
            if per_worker % micro0:
                raise bad(fld(""), f"{where}the {per_worker} examples per worker do not divide into micro-batches of "
                                   f"{micro0}; pick factors that keep the batch a multiple of {micro0 * num_workers}")
            return micro0, per_worker // micro0
        if d.grad_accum_steps is not None:
            accum = d.grad_accum_steps
            if per_worker % accum:
                raise bad(fld("data.grad_accum_steps"),
                          f"{where}got {accum}: the {per_worker} examples per worker per step (= {Bk} / "
                          f"{num_workers} workers) do not divide into {accum} micro-batches; use a divisor of "
                          f"{per_worker}")
        else:
            accum = 1
            if cap is not None:
                # the fewest micro-steps whose micro-batch fits under the cap and divides the per-worker batch
                accum = next((a for a in range(1, per_worker + 1)
                              if per_worker % a == 0 and per_worker // a <= cap), per_worker)
        micro = per_worker // accum
        if cap is not None and micro > cap:
            raise bad(fld("data.per_worker_batch_cap"),
                      f"{where}got {cap}, below the micro-batch {micro} forced by "
                      f"grad_accum_steps={accum}; raise the cap or the accumulation")
        return micro, accum

    micro0, accum0 = split(B, 0)  # split() reads micro0 for the later phases of an `accum` ramp
    splits = [(micro0, accum0)] + [split(Bk, k) for k, Bk in enumerate(batches[1:], 1)]

    if train_size is None:
        from largebatch.tasks import task_of, train_size as task_train_size

        train_size = task_train_size(task_of(cfg), cfg)
        if d.train_subset is not None:
            # checked here, not in the data layer, so the message names the study file and the dotted field
            what = repr(d.dataset) if cfg.task.name == "classification" else f"task {cfg.task.name!r}"
            if d.train_subset > train_size:
                raise bad("data.train_subset", f"got {d.train_subset}, more than the {train_size} training "
                                               f"examples of {what}; use at most {train_size}")
            train_size = d.train_subset
    for k, Bk in enumerate(batches):
        if train_size < Bk:
            field = "data.global_batch_size" if k == 0 else "schedule.batch_ramp.factors"
            where = "" if k == 0 else f"phase {k} (from epoch {starts[k]}): "
            raise bad(field, f"{where}got {Bk}, larger than the {train_size} training examples; "
                             f"use at most {train_size}")

    # ---- steps: epoch e runs train_size // B_e steps (B_e = its phase's batch); the examples budget is epochs
    # Per phase, never per epoch: time and memory do not grow with budget.epochs (up to MAX_EPOCHS)
    n_epochs = math.ceil(b.epochs)

    def spe(e: int) -> int:
        return train_size // batches[bisect.bisect_right(starts, e) - 1]

    def full_steps(n: int) -> int:
        """Optimizer steps in the first n whole epochs (past the budget, at the last phase's rate)."""
        ends = starts[1:] + [max(n, starts[-1])]
        return sum(max(0, min(n, end) - st) * (train_size // Bk) for st, end, Bk in zip(starts, ends, batches))

    def steps_at(x: float) -> int:
        """Optimizer steps in the first x epochs (x may be fractional, or past the budget for decay milestones)."""
        whole = int(x)
        return full_steps(whole) + round((x - whole) * spe(min(whole, n_epochs - 1)))

    total = steps_at(b.epochs)
    epochs = n_epochs
    if b.max_steps is not None:
        total = min(total, b.max_steps)
        epochs = min(epochs, bisect.bisect_left(range(1, n_epochs + 1), total, key=full_steps) + 1)
    total = max(total, 1)

    if s.warmup == "none":
        warmup_steps = 0
    elif s.warmup_examples is not None:
        warmup_steps, left = 0, s.warmup_examples  # each step shows its phase's batch
        for st, end, Be in zip(starts, starts[1:] + [n_epochs], batches):  # phase by phase
            per_epoch = train_size // Be * Be  # examples in one epoch of this phase
            whole = min(end - st, max(0, left - 1) // per_epoch)  # epochs that leave more than one epoch to go
            warmup_steps, left = warmup_steps + whole * (train_size // Be), left - whole * per_epoch
            if whole < end - st:
                warmup_steps += math.ceil(left / Be)
                break
        else:
            warmup_steps += math.ceil(left / batches[-1])
    else:
        warmup_steps = steps_at(s.warmup_epochs)
    if warmup_steps > total:
        field = "schedule.warmup_examples" if s.warmup_examples is not None else "schedule.warmup_epochs"
        raise bad(field, f"warmup of {warmup_steps} steps is longer than the {total} training steps; "
                         f"shorten the warmup or raise budget.epochs")
    milestones = tuple(steps_at(m) for m in s.milestones)
    if list(milestones) != sorted(milestones):
        raise bad("schedule.milestones", f"got {list(s.milestones)}; milestones must be increasing")

    try:
        lrs = [scaled_lr(cfg.scaling.rule, cfg.optim.base_lr, Bk, cfg.optim.base_batch_size, cfg.scaling.alpha)
               for Bk in batches]
    except KeyError as e:
        raise bad("scaling.rule", str(e.args[0])) from None
    phases = tuple(Phase(start_epoch=starts[k], start_step=steps_at(starts[k]), global_batch_size=Bk,
                         per_worker_batch=splits[k][0], grad_accum_steps=splits[k][1],
                         steps_per_epoch=train_size // Bk, peak_lr=lrs[k]) for k, Bk in enumerate(batches))

    return Resolved(
        cfg=cfg, num_workers=num_workers, global_batch_size=B, per_worker_batch=micro0, micro_batch=micro0,
        grad_accum_steps=accum0, train_size=train_size, steps_per_epoch=spe(0), examples_per_epoch=spe(0) * B,
        epochs=epochs, total_steps=total, peak_lr=lrs[0], warmup_steps=warmup_steps, milestone_steps=milestones,
        phases=phases,
    )


# ---------------------------------------------------------------- loading files and overrides
def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 0.1 -> float, [1,2] -> list, linear -> str."""
    try:
        return load_yaml_text(text)
    except yaml.YAMLError:
        return text


def parse_sets(items: list[str] | None, source: str = "--set") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"got {item!r}; write key=value, e.g. optim.base_lr=0.1", source=source)
        out[key.strip()] = parse_value(value)
    return out


def apply_overrides(tree: dict, overrides: dict[str, Any]) -> dict:
    for key, value in overrides.items():
        tree = set_dotted(tree, key, value)
    return tree


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"no such file; give the path of a study YAML (see tune_spaces/)", source=str(path))
    try:
        data = load_yaml_text(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise BadInput(f"malformed YAML{where}: {problem}; fix the syntax", source=str(path)) from None
    if not isinstance(data, dict):
        raise BadInput(f"the top level must be a mapping with name:, base:, search:, ...; got "
                       f"{type(data).__name__}", source=str(path))
    return data


def load_study(path: str | Path, sets: dict[str, Any] | None = None, *, smoke: bool = False) -> StudyConfig:
    """Read, override and validate a study YAML. `sets` keys starting with tuner./report./search. address
    those blocks; anything else addresses the trial config (base) and the baseline alike."""
    source = str(path)
    raw = read_yaml(path)
    raw.setdefault("name", Path(path).stem)
    if smoke:
        sm = raw.get("smoke") or {}
        if not isinstance(sm, dict):
            raise BadInput("smoke must be a mapping with base:, search:, tuner:", source=source, field="smoke")
        raw = _apply_blocks(raw, {"base": sm.get("base") or {}, "tuner": sm.get("tuner") or {}})
        raw["search"] = {**(raw.get("search") or {}), **(sm.get("search") or {})}
    if sets:
        raw = _apply_blocks(raw, _split_sets(sets))
    study = _parse(StudyConfig, raw, source)
    check_names(study.base, source)
    for key, domain in study.search.items():
        _check_search_key(study, key, domain, source)
    if study.baseline is not None:
        baseline_trial(study, source)  # validates the overrides
    return check_task(study, source)


def check_task(study: StudyConfig, source: str) -> StudyConfig:
    """Before any trial: the task loads and has its parts, its data items are tensors, and tuner.metric is one it
    reports. Returns the study with tuner.mode and report.tolerance_units filled in from the metric's direction."""
    from largebatch.tasks import build_data, load_task

    def at(field: str, e: BadInput) -> BadInput:
        msg = str(e)
        if e.field and msg.startswith(f"{e.field}: "):
            msg = msg[len(e.field) + 2:]
        return BadInput(msg, source=source, field="base." + (e.field or field))

    t = study.base.task
    try:
        task = load_task(t.name, t.kwargs)
        if task.train_size is None:  # a user task: look at its data once (item 0 of each split)
            build_data(task, study.base)
    except BadInput as e:
        raise at("task.name", e) from None
    reported = task.reported()
    metric = study.tuner.metric
    if metric not in reported:
        raise BadInput(f"got {metric!r}: task {t.name!r} reports {', '.join(reported)}", source=source,
                       field="tuner.metric")
    mode = reported[metric]
    if study.tuner.mode is not None and study.tuner.mode != mode:
        raise BadInput(f"got {study.tuner.mode!r}, but {metric} is better when {'higher' if mode == 'max' else 'lower'}"
                       f"; use mode: {mode} or drop tuner.mode", source=source, field="tuner.mode")
    units = study.report.tolerance_units or ("points" if mode == "max" else "absolute")
    return study.model_copy(update={"tuner": study.tuner.model_copy(update={"mode": mode}),
                                    "report": study.report.model_copy(update={"tolerance_units": units})})


def _split_sets(sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    blocks: dict[str, dict[str, Any]] = {"base": {}, "tuner": {}, "report": {}, "search": {}}
    for key, value in sets.items():
        head, _, rest = key.partition(".")
        if head in ("tuner", "report", "search", "base") and rest:
            blocks[head][rest] = value  # `base.` is optional: base.optim.base_lr == optim.base_lr
        else:
            blocks["base"][key] = value
    return blocks


def _apply_blocks(raw: dict, blocks: dict[str, dict[str, Any]]) -> dict:
    raw = dict(raw)
    for block, overrides in blocks.items():
        if overrides and block == "search":  # search keys are dotted paths themselves: set whole entries
            current = raw.get("search") or {}
            raw["search"] = {**(current if isinstance(current, dict) else {}), **overrides}
        elif overrides:
            current = raw.get(block) or {}
            raw[block] = apply_overrides(current if isinstance(current, dict) else {}, overrides)
    if blocks.get("base") and isinstance(raw.get("baseline"), dict):
        # trial-level overrides (--set, smoke) apply to the baseline too, unless the baseline pins that key
        raw["baseline"] = {**blocks["base"], **raw["baseline"]}
    return raw


SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


def _check_search_key(study: StudyConfig, key: str, domain: dict[str, Any], source: str) -> None:
    field = f"search.{key}"
    if len(domain) != 1 or next(iter(domain)) not in SEARCH_KINDS:
        raise BadInput(f"got {domain!r}; a search entry is one of {{grid: [..]}}, {{choice: [..]}}, "
                       f"{{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}, {{randint: [lo, hi]}}",
                       source=source, field=field)
    kind, values = next(iter(domain.items()))
    if not isinstance(values, list) or not values:
        raise BadInput(f"{kind} needs a non-empty list, got {values!r}", source=source, field=field)
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
            raise BadInput(f"{kind} needs [low, high] with low < high, got {values!r}", source=source, field=field)
        if kind == "loguniform" and values[0] <= 0:
            raise BadInput(f"loguniform needs low > 0, got {values[0]}", source=source, field=field)
        # uniform/loguniform draw floats (so an int setting such as a batch size fails here, not mid-study)
        samples = [float(values[0]), float(values[1])] if kind != "randint" else [int(values[0])]
    else:
        samples = values
    base = study.base.model_dump()
    if get_dotted(base, key, _MISSING) is _MISSING:
        top = key.split(".")[0]
        valid = list(TrialConfig.model_fields)
        hint = did_you_mean(key, flatten(base).keys()) or did_you_mean(top, valid)
        raise BadInput(f"no such trial setting{hint}; search keys are dotted paths into base, e.g. "
                       f"data.global_batch_size", source=source, field=field)
    for v in samples:  # every grid/choice value must make a valid trial config
        try:
            parse_trial(set_dotted(base, key, v), source="", prefix="")
        except BadInput as e:
            raise BadInput(f"{kind} value {v!r}: {e}", source=source, field=field) from None


_MISSING = object()


def search_values(domain: dict[str, Any]) -> list[Any]:
    """The values a grid/choice entry can take; [] for sampled ranges (checked by their bounds at load time)."""
    kind, values = next(iter(domain.items()))
    return list(values) if kind in ("grid", "choice") else []


def check_search_resolves(study: StudyConfig, num_workers: int, source: str = "<study>") -> None:
    """Resolve base with every grid/choice value, so a batch that does not divide over the workers or exceeds the
    dataset is an error before any trial starts (docs/design.md §10), not a failed trial mid-study."""
    base = study.base.model_dump()
    for key, domain in study.search.items():
        for v in search_values(domain):
            cfg = TrialConfig.model_validate(set_dotted(base, key, v))  # load_study already parsed it
            try:
                resolve(cfg, num_workers, source="", prefix="")
            except BadInput as e:
                raise BadInput(f"{next(iter(domain))} value {v!r}: {e}", source=source,
                               field=f"search.{key}") from None


def baseline_trial(study: StudyConfig, source: str = "<study>") -> TrialConfig:
    tree = apply_overrides(study.base.model_dump(), study.baseline or {})
    return parse_trial(tree, source=source, prefix="baseline.")
