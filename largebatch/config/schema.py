"""The config schema: strict pydantic models for a trial (`base:`) and a study (`search:`, `tuner:`, ...).

Strict: no "16" -> 16 coercion; unknown keys are errors; frozen: nobody mutates a config downstream. Checks that
need a registry (names) live in config/names.py; derived values in config/resolve.py (docs/design.md §4, §10).
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

MAX_SEED = 2**32 - 1  # np.random.RandomState and torch.manual_seed both take it
MAX_EPOCHS = 100_000  # bounds what resolve() and a trial may be asked to plan


class _Strict(BaseModel):
    # strict: no "16" -> 16 coercion; forbid: unknown keys are errors; frozen: nobody mutates a config downstream;
    # no inf/nan: a non-finite LR or epoch count is never a setting
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- the trial config (`base:`)
class DataConfig(_Strict):
    dataset: str = "fashion-mnist"
    path: Optional[str] = None  # local folder / .npz file / s3:// prefix; None = the dataset's default location
    train_subset: Optional[int] = Field(default=None, gt=0)  # first N of a seeded permutation, for quick runs
    # evaluate on the first N of a fixed permutation (seed EVAL_SUBSET_SEED, never cfg.seed) of the eval split: the
    # same examples for every trial, seed and epoch; None = the whole split (tasks/build.py)
    eval_subset: Optional[int] = Field(default=None, gt=0)
    # examples per optimizer step, over all workers and micro-steps; "full": the whole (subset) training set, one
    # step per epoch (resolve() turns it into the number; per_worker_batch_cap/grad_accum_steps bound the memory)
    global_batch_size: Union[Annotated[int, Field(gt=0, le=2**24)], Literal["full"]] = 16
    # memory cap on one forward pass; forces accumulation. "auto": each worker finds the largest micro-batch that fits
    # before training (on a GPU: halve until no out-of-memory error; on a CPU: within auto_memory_mb of activations)
    per_worker_batch_cap: Union[Annotated[int, Field(gt=0)], Literal["auto"], None] = None
    auto_memory_mb: Optional[float] = Field(default=None, gt=0)  # the CPU budget for `auto`: tensors saved for backward
    grad_accum_steps: Optional[int] = Field(default=None, gt=0)  # explicit accumulation; None = derived from the cap
    eval_batch_size: int = Field(default=4096, gt=0)
    loader_workers: int = Field(default=0, ge=0, le=64)  # DataLoader processes for a task whose data is a torch Dataset


class ModelConfig(_Strict):
    name: str = "mlp"
    hidden_sizes: list[Annotated[int, Field(gt=0)]] = [256, 128]  # mlp
    depth: int = Field(default=20, gt=0)  # resnet: 6n+2
    width: int = Field(default=16, gt=0)  # resnet base width
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    factory: Optional[str] = None  # "package.module:function" for a user model (name: factory)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to the user factory
    ghost_batch_size: Optional[int] = Field(default=None, ge=2)  # ghost batch norm (Hoffer et al. 2017); BN models only


class OptimConfig(_Strict):
    name: str = "sgd"
    base_lr: float = Field(default=0.01, gt=0.0)  # the LR at base_batch_size examples per step
    base_batch_size: int = Field(default=16, gt=0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0.0)
    betas: list[float] = Field(default=[0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(default=1e-8, gt=0.0)
    trust_coefficient: float = Field(default=0.001, gt=0.0)  # LARS eta
    # which optimizer takes which of these settings: optim/factory.py OPTIMIZERS (OptimInfo.settings)
    alpha: float = Field(default=0.99, ge=0.0, lt=1.0)  # rmsprop: decay of the running mean of squared gradients
    centered: bool = False  # rmsprop: divide by the gradient's estimated variance instead of its second moment
    # rprop: step shrink/grow on a sign flip/keep
    etas: list[float] = Field(default=[0.5, 1.2], min_length=2, max_length=2)
    step_sizes: list[float] = Field(default=[1e-6, 50.0], min_length=2, max_length=2)  # rprop: per-weight step bounds
    grad_clip_norm: Optional[float] = Field(default=None, gt=0.0)


class ScalingConfig(_Strict):
    rule: str = "none"
    alpha: float = 0.5  # exponent of the `power` rule


class BatchRampConfig(_Strict):
    """Grow the batch instead of decaying the LR (Smith et al. 2018, arXiv 1711.00489): B *= factors[i] at epoch
    milestones[i]. The LR follows the scaling rule for each phase's batch (rule none: the LR is held, Smith's recipe);
    the examples budget (epochs) is unchanged, so later phases take fewer steps."""

    # whole epochs at which the global batch grows
    milestones: list[Annotated[int, Field(gt=0, le=MAX_EPOCHS)]] = Field(default=[], max_length=100)
    factors: list[Annotated[float, Field(gt=0.0)]] = []  # batch multiplier per milestone (1 = no change)
    grow: Literal["batch", "accum"] = "batch"  # batch: the micro-batch grows (the cap forces accumulation);
    #                                            accum: the micro-batch stays, accumulation multiplies (flat memory)


class ScheduleConfig(_Strict):
    warmup: str = "linear"
    warmup_epochs: float = Field(default=0.0, ge=0.0, le=MAX_EPOCHS)
    warmup_examples: Optional[int] = Field(default=None, ge=0)  # alternative to warmup_epochs
    warmup_start_factor: float = Field(default=0.1, gt=0.0, le=1.0)
    decay: str = "constant"
    # epochs, for decay: step
    milestones: list[Annotated[float, Field(gt=0.0, le=MAX_EPOCHS)]] = Field(default=[], max_length=100)
    gamma: float = Field(default=0.1, gt=0.0)
    min_lr_factor: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_ramp: BatchRampConfig = BatchRampConfig()


class BudgetConfig(_Strict):
    # the examples budget: epochs x train size, whatever the batch
    epochs: float = Field(default=10.0, gt=0.0, le=MAX_EPOCHS)
    # optional steps budget (cuts the examples budget short)
    max_steps: Optional[int] = Field(default=None, gt=0, le=10**9)
    target_val_acc: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    stop_at_target: bool = False
    divergence_loss: float = Field(default=100.0, gt=0.0)  # a train loss above this marks the trial diverged


class CheckpointConfig(_Strict):
    # a checkpoint when every_epochs epochs or every_s seconds of training have passed since the last one (either
    # may be null), and always after the last epoch: what a restarted trial loses is bounded in time, and a short
    # epoch does not pay a save and an upload each time
    every_epochs: Optional[int] = Field(default=None, gt=0)
    every_s: Optional[float] = Field(default=60.0, gt=0, allow_inf_nan=False)
    num_to_keep: int = Field(default=2, gt=0)
    # also after these epochs (1-based): tuner.scheduler sha sets its rungs here, so a trial paused at a rung
    # resumes from that epoch
    at_epochs: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list, max_length=64)


class InstrumentsConfig(_Strict):
    """Diagnostics logged per epoch (largebatch/instruments/). Off where they cost time."""

    grad_noise_scale: bool = False  # B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018), no extra backward
    noise_scale_ema: float = Field(default=0.95, ge=0.0, lt=1.0)  # EMA decay per optimizer step of |G|^2 and tr(Sigma)
    sharpness: bool = False  # top Hessian eigenvalue at the end (Keskar et al. 2016), power iteration on HVPs
    sharpness_every_epochs: Optional[int] = Field(default=None, gt=0)  # also every K epochs
    sharpness_probe_size: int = Field(default=1024, gt=0)  # examples in the fixed probe batch (seeded, same for all B)
    sharpness_iters: int = Field(default=50, gt=0)  # power iterations at most (stops at 1e-4 relative change)
    trust_ratio: bool = True  # LARS/LAMB per-layer trust ratio min/median/max per epoch (one sync per epoch)


class TaskConfig(_Strict):
    """The workload (largebatch/tasks, docs/tasks.md): a registered task or 'package.module:function' (user code,
    imported and run on the driver and every worker), called with `kwargs`."""

    name: str = "classification"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TrialConfig(_Strict):
    seed: int = Field(default=0, ge=0, le=MAX_SEED)  # numpy and torch take seeds in 0..2**32-1
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
    grace_period_epochs: int = Field(default=1, gt=0)  # asha, sha
    # asha, sha: keep the best 1/3 at each rung (Hyperband's eta = 3)
    reduction_factor: float = Field(default=3.0, gt=1.0)
    num_samples: int = Field(default=1, gt=0, le=10_000)  # grid: repeats of the grid; random/optuna: samples
    max_concurrent: Optional[int] = Field(default=None, gt=0)
    workers_per_trial: int = Field(default=1, gt=0)
    cpus_per_worker: int = Field(default=1, gt=0)
    use_gpu: bool = False
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default=[0], min_length=1, max_length=100)
    max_failures: int = Field(default=2, ge=0, le=100)  # Train FailureConfig: worker restarts from the last checkpoint
    # a 1-worker trial has no data parallelism: run it in Tune's trial process (no Train controller or worker
    # group to start); false: every trial goes through Ray Train's TorchTrainer (docs/design.md §8)
    in_process: bool = True
    # before the search, time each batch size's steps alone (tune/throughput.py); the report's speeds are then
    # steps x profiled step time instead of wall-clock measured while trials share the machine (docs/design.md §9)
    profile: bool = True
    time_budget_s: Optional[float] = Field(default=None, gt=0)
    # the study's training budget, in baseline runs of projected training (the baseline's full budget = 1, the
    # baseline included): trials stop, and no new one starts, once it would be exceeded; searched trials stop at the
    # target and once they cannot beat the soonest recipe found (tune/stopper.py)
    budget_runs: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)


class ReportConfig(_Strict):
    tolerance: float = Field(default=0.5, ge=0.0)  # how much worse than the baseline still counts as "safe", in:
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
    # reference -> the credential-bearing string it replaced in `search` (load_study; largebatch/redact.py
    # hide_credentials): what Tune writes and names after a trial holds the reference, the trial gets the string
    _credentials: dict[str, str] = PrivateAttr(default_factory=dict)

    def credentials(self) -> dict[str, str]:
        """{reference: real string} of the searched values that hold a credential (empty when none do)."""
        return dict(self._credentials)

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
