"""The one typed, strict config, and `resolve()`: the ONE place derived values are computed.

A study YAML has blocks `base:` (a TrialConfig), `search:` (dotted keys -> domains), `tuner:`, `baseline:`
(dotted overrides of base) and `report:`. Dicts exist only at the YAML and Ray boundaries; everything else reads
attributes. Unknown keys, wrong types and impossible values are `BadInput` naming the file and dotted path.

Units are batch-size invariant (STYLE.md): LR is "per base_batch_size examples"; warmup and milestones are in
epochs or examples. `resolve(num_workers)` turns them into steps for one concrete global batch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from largebatch.errors import BadInput, did_you_mean


class _Strict(BaseModel):
    # strict: no "16" -> 16 coercion; forbid: unknown keys are errors; frozen: nobody mutates a config downstream
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------- the trial config (`base:`)
class DataConfig(_Strict):
    dataset: str = "fashion-mnist"
    path: Optional[str] = None  # local folder / .npz file / s3:// prefix; None = the dataset's default location
    train_subset: Optional[int] = Field(None, gt=0)  # first N of a seeded permutation, for quick runs
    global_batch_size: int = Field(16, gt=0)  # examples per optimizer step, over all workers and micro-steps
    per_worker_batch_cap: Optional[int] = Field(None, gt=0)  # memory cap on one forward pass; forces accumulation
    grad_accum_steps: Optional[int] = Field(None, gt=0)  # explicit accumulation; None = derived from the cap
    eval_batch_size: int = Field(4096, gt=0)


class ModelConfig(_Strict):
    name: str = "mlp"
    hidden_sizes: list[Annotated[int, Field(gt=0)]] = [256, 128]  # mlp
    depth: int = Field(20, gt=0)  # resnet: 6n+2
    width: int = Field(16, gt=0)  # resnet base width
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    factory: Optional[str] = None  # "package.module:function" for a user model (name: factory)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to the user factory
    ghost_batch_size: Optional[int] = Field(None, gt=0)  # ghost batch norm (Hoffer et al. 2017)


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


class ScheduleConfig(_Strict):
    warmup: str = "linear"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_examples: Optional[int] = Field(None, ge=0)  # alternative to warmup_epochs
    warmup_start_factor: float = Field(0.1, gt=0.0, le=1.0)
    decay: str = "constant"
    milestones: list[float] = []  # epochs, for decay: step
    gamma: float = Field(0.1, gt=0.0)
    min_lr_factor: float = Field(0.0, ge=0.0, le=1.0)


class BudgetConfig(_Strict):
    epochs: float = Field(10.0, gt=0.0)  # the examples budget: epochs x train size, whatever the batch
    max_steps: Optional[int] = Field(None, gt=0)  # optional steps budget (cuts the examples budget short)
    target_val_acc: Optional[float] = Field(None, gt=0.0, le=1.0)
    stop_at_target: bool = False
    divergence_loss: float = Field(100.0, gt=0.0)  # a train loss above this marks the trial diverged


class CheckpointConfig(_Strict):
    every_epochs: int = Field(1, gt=0)
    num_to_keep: int = Field(2, gt=0)


class TrialConfig(_Strict):
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 only on GPU
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    budget: BudgetConfig = BudgetConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


# ---------------------------------------------------------------- the study (`search:`, `tuner:`, ...)
class TunerConfig(_Strict):
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
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
    tolerance: float = Field(0.5, ge=0.0)  # accuracy points below the baseline that still count as "safe"


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
        if not name.strip():
            raise ValueError("name must not be empty")
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
    if cfg.data.dataset == "npz" and not cfg.data.path:
        raise BadInput("dataset 'npz' needs data.path: a .npz file with x_train, y_train, x_test, y_test",
                       source=source, field=prefix + "data.path")


# ---------------------------------------------------------------- resolve(): every derived value, once
class Resolved(_Strict):
    """A trial config plus everything derived from it for one worker count. Read-only downstream."""

    cfg: TrialConfig
    num_workers: int
    global_batch_size: int  # = per_worker_batch * num_workers * grad_accum_steps (DESIGN §4)
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

    def lr_at(self, step: int) -> float:
        from largebatch.schedules import lr_factor

        s = self.cfg.schedule
        return self.peak_lr * lr_factor(
            step, self.total_steps, warmup=s.warmup, warmup_steps=self.warmup_steps,
            start_factor=s.warmup_start_factor, decay=s.decay, min_factor=s.min_lr_factor,
            milestones=self.milestone_steps, gamma=s.gamma,
        )

    def summary(self) -> dict[str, Any]:
        """The derived values a person checks before launching (and the ones logged as params)."""
        return {
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


def resolve(cfg: TrialConfig, num_workers: int, *, train_size: int | None = None,
            source: str = "<config>", prefix: str = "base.") -> Resolved:
    """Derive per-worker batch, accumulation, peak LR and step counts. Anything impossible is BadInput."""
    from largebatch.scaling import scaled_lr

    d, s, b = cfg.data, cfg.schedule, cfg.budget
    B = d.global_batch_size

    def bad(field: str, msg: str) -> BadInput:
        return BadInput(msg, source=source, field=prefix + field)

    if num_workers < 1:
        raise BadInput(f"got {num_workers} workers; use 1 or more", source=source, field="workers")
    if B % num_workers:
        raise bad("data.global_batch_size",
                  f"got {B}, which does not divide over {num_workers} workers; use a multiple of {num_workers}")
    per_worker = B // num_workers  # examples per worker per optimizer step, over all its micro-steps
    if d.grad_accum_steps is not None:
        accum = d.grad_accum_steps
        if per_worker % accum:
            raise bad("data.grad_accum_steps",
                      f"got {accum}: the {per_worker} examples per worker per step (= {B} / {num_workers} "
                      f"workers) do not divide into {accum} micro-batches; use a divisor of {per_worker}")
    else:
        accum = 1
        if d.per_worker_batch_cap is not None:
            # the fewest micro-steps whose micro-batch fits under the cap and divides the per-worker batch
            accum = next((a for a in range(1, per_worker + 1)
                          if per_worker % a == 0 and per_worker // a <= d.per_worker_batch_cap), per_worker)
    micro = per_worker // accum
    if d.per_worker_batch_cap is not None and micro > d.per_worker_batch_cap:
        raise bad("data.per_worker_batch_cap",
                  f"got {d.per_worker_batch_cap}, below the micro-batch {micro} forced by grad_accum_steps={accum}; "
                  f"raise the cap or the accumulation")

    if train_size is None:
        from largebatch.data import dataset_size

        train_size = dataset_size(d.dataset, d.path)
        if d.train_subset is not None:
            # checked here, not in the data layer, so the message names the study file and the dotted field
            if d.train_subset > train_size:
                raise bad("data.train_subset", f"got {d.train_subset}, more than the {train_size} training "
                                               f"examples of {d.dataset!r}; use at most {train_size}")
            train_size = d.train_subset
    if train_size < B:
        raise bad("data.global_batch_size",
                  f"got {B}, larger than the {train_size} training examples; use at most {train_size}")
    steps_per_epoch = train_size // B
    epochs = math.ceil(b.epochs)
    total = round(b.epochs * steps_per_epoch)
    if b.max_steps is not None:
        total = min(total, b.max_steps)
        epochs = min(epochs, math.ceil(total / steps_per_epoch))
    total = max(total, 1)

    if s.warmup == "none":
        warmup_steps = 0
    elif s.warmup_examples is not None:
        warmup_steps = math.ceil(s.warmup_examples / B)
    else:
        warmup_steps = round(s.warmup_epochs * steps_per_epoch)
    if warmup_steps > total:
        field = "schedule.warmup_examples" if s.warmup_examples is not None else "schedule.warmup_epochs"
        raise bad(field, f"warmup of {warmup_steps} steps is longer than the {total} training steps; "
                         f"shorten the warmup or raise budget.epochs")
    milestones = tuple(round(m * steps_per_epoch) for m in s.milestones)
    if list(milestones) != sorted(milestones):
        raise bad("schedule.milestones", f"got {list(s.milestones)}; milestones must be increasing")

    try:
        peak_lr = scaled_lr(cfg.scaling.rule, cfg.optim.base_lr, B, cfg.optim.base_batch_size, cfg.scaling.alpha)
    except KeyError as e:
        raise bad("scaling.rule", str(e.args[0])) from None

    return Resolved(
        cfg=cfg, num_workers=num_workers, global_batch_size=B, per_worker_batch=micro, micro_batch=micro,
        grad_accum_steps=accum, train_size=train_size, steps_per_epoch=steps_per_epoch,
        examples_per_epoch=steps_per_epoch * B, epochs=epochs, total_steps=total, peak_lr=peak_lr,
        warmup_steps=warmup_steps, milestone_steps=milestones,
    )


# ---------------------------------------------------------------- loading files and overrides
def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 0.1 -> float, [1,2] -> list, linear -> str."""
    try:
        return yaml.safe_load(text)
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
        data = yaml.safe_load(p.read_text())
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
    return study


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
    dataset is an error before any trial starts (DESIGN §10), not a failed trial mid-study."""
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
