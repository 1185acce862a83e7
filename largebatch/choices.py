"""The study's searcher and scheduler names (`tuner.searcher`, `tuner.scheduler`), one layer below config/.

The loader checks a name here before Ray starts (config/names.py) and `largebatch list` shows them; what each name
builds lives in tune/searchers.py and tune/schedulers.py, imported when the driver first asks for it (a lazy
registry entry: tune/ imports config/, so config/ must not import tune/, not even inside a function).
"""
from __future__ import annotations

from largebatch.registry import Registry

SEARCHERS: Registry = Registry("searcher")
SEARCHERS.add_lazy("grid", "largebatch.tune.searchers:grid_searcher",
                   "every combination of the grid/choice entries, tuner.num_samples times")
SEARCHERS.add_lazy("random", "largebatch.tune.searchers:random_searcher",
                   "tuner.num_samples independent draws from the domains (seeded, reproducible)")
SEARCHERS.add_lazy("optuna", "largebatch.tune.searchers:optuna_searcher",
                   "Ray Tune's OptunaSearch (TPE) over the domains, tuner.num_samples suggestions")

SCHEDULERS: Registry = Registry("scheduler")
SCHEDULERS.add_lazy("fifo", "largebatch.tune.schedulers:fifo_scheduler", "run every trial to its budget")
SCHEDULERS.add_lazy("asha", "largebatch.tune.schedulers:asha_scheduler",
                    "stop the worse trials early at epoch milestones (tuner.grace_period_epochs, raised past any "
                    "searched warmup; tuner.reduction_factor); stopped trials count as stopped_early")
SCHEDULERS.add_lazy("sha", "largebatch.tune.schedulers:sha_scheduler",
                    "successive halving decided on every searched trial at each rung (epochs as for asha): trials "
                    "pause at a rung until all have reached it, then the best 1/eta go on; order-free")
