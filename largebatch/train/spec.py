"""One trial, resolved once: the `TrialSpec` that crosses into the process that trains.

The driver side of a trial (tune/runtime.py, or `largebatch train`) resolves the config into a `Resolved` (global
batch, per-worker batch, accumulation, steps, warmup, peak LR) for the data it will run on. The spec carries that,
the run's tracking target and its resources, as is, to the training process (a Ray Train worker or the in-process
trial); that process checks it against the data it loaded instead of resolving again, so what is logged as the
trial's params is what it runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from largebatch.config import Resolved, TrialConfig


@dataclass(frozen=True)
class TrialSpec:
    res: Resolved                      # the config and every value derived from it (config/resolve.py)
    arm: str = "search"                # search | baseline
    cpus_per_worker: int = 1
    use_gpu: bool = False
    tracking: Optional[dict] = None    # {"uri", "run_id"}: the trial's MLflow child run (rank 0 logs to it)
    t_submit: Optional[float] = None   # time.time() when the trial was asked for: start-up is measured from it

    @property
    def cfg(self) -> TrialConfig:
        return self.res.cfg

    def replace(self, **changes) -> "TrialSpec":
        return dataclasses.replace(self, **changes)

    def check(self, world: int, train_size: int) -> Resolved:
        """The spec's resolution, after checking it was made for this worker group and this data."""
        if world != self.res.num_workers:
            raise RuntimeError(f"the trial was resolved for {self.res.num_workers} worker(s), it runs on {world}")
        if train_size != self.res.train_size:
            raise RuntimeError(f"the trial was resolved for {self.res.train_size} training examples, the data it "
                               f"loaded has {train_size}")
        return self.res
