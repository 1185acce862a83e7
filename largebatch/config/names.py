"""Registry names in a config (rule, warmup, optimizer, model, dataset, searcher, scheduler), checked at load time,
before any trial starts. The registries are imported inside the functions: `import largebatch.config` stays light."""
from __future__ import annotations

from typing import Protocol

from largebatch.config.schema import TrialConfig, TunerConfig
from largebatch.errors import BadInput


class _Names(Protocol):
    """What the checks read of a registry (largebatch/registry.py Registry, whatever it holds)."""

    def __contains__(self, name: object) -> bool: ...

    def names(self) -> list[str]: ...


def check_names(cfg: TrialConfig, source: str, prefix: str = "base.") -> None:
    """Registry names are checked here, before any trial starts (imports stay light: registries only)."""
    from largebatch.errors import unknown_choice
    from largebatch.scaling import RULES
    from largebatch.schedules import DECAYS, WARMUPS
    from largebatch.optim import OPTIMIZERS
    from largebatch.models import MODELS
    from largebatch.data import DATASETS

    checks: list[tuple[str, str, _Names, str]] = [
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


def check_tuner_names(tuner: TunerConfig, source: str) -> None:
    """tuner.searcher and tuner.scheduler name registered ones (choices.py: names only, no tune/ or Ray import)."""
    from largebatch.choices import SCHEDULERS, SEARCHERS
    from largebatch.errors import unknown_choice

    for field, value, registry in [("searcher", tuner.searcher, SEARCHERS), ("scheduler", tuner.scheduler, SCHEDULERS)]:
        if value not in registry:
            raise BadInput(unknown_choice(field, value, registry.names()), source=source, field=f"tuner.{field}")
    if tuner.scheduler == "sha" and (tuner.workers_per_trial != 1 or not tuner.in_process):
        raise BadInput(SHA_NEEDS_IN_PROCESS + f"; got workers_per_trial {tuner.workers_per_trial}, in_process "
                       f"{str(tuner.in_process).lower()}", source=source, field="tuner.scheduler")


SHA_NEEDS_IN_PROCESS = ("'sha' pauses trials at its rungs and resumes them from there, which only trials trained in "
                        "Tune's own process do (tuner.workers_per_trial 1, tuner.in_process true); use 'asha' for "
                        "multi-worker trials")
