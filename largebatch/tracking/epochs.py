"""Worker-side per-epoch metrics (`EpochLogger`, rank 0) and the backfill of epochs a worker could not log
(`_log_missing_epochs`, the driver's Tracker.log_final): each epoch lands at step=epoch exactly once."""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Optional

from largebatch.tracking.client import _client, numeric, retry_budget_s, tracking_error, unreachable, with_retry


def _epoch_metrics(metrics: dict[str, Any], ts: int):
    from mlflow.entities import Metric

    epoch = int(metrics["epoch"])
    # fit_before_s: the earlier runs' trial time, for the final fit_s (train/loop.py), not a series of its own
    return [Metric(k, v, ts, epoch) for k, v in numeric(metrics).items()
            if k not in ("epoch", "is_final", "fit_before_s")]


def _logged_epochs(client, run_id: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, "val_loss")}  # every task reports val_loss


def _log_missing_epochs(client, run_id: str, history: list[dict[str, Any]]) -> None:
    """Log each epoch of `history` whose step MLflow does not hold yet, in epoch order."""
    present = _logged_epochs(client, run_id)
    ts = int(time.time() * 1000)
    for h in sorted(history, key=lambda h: int(h["epoch"])):
        if int(h["epoch"]) not in present:
            client.log_batch(run_id, metrics=_epoch_metrics(h, ts))
            present.add(int(h["epoch"]))


class EpochLogger:
    """Worker-side (rank 0): per-epoch metrics at step=epoch, exactly once per epoch across restarts and outages.

    An epoch that cannot be logged waits in `pending`; each later epoch first sends what waits, in epoch order,
    skipping steps MLflow already holds (after a failed call it asks again: a lost answer may hide a write that
    happened). `close()` waits a bounded time for the server at the end. Nothing here raises into training."""

    def __init__(self, uri: str, run_id: str, retry_s: Optional[float] = None):
        self.client = _client(uri)
        self.run_id = run_id
        self.retry_s = retry_s  # close()'s wait; None: retry_budget_s()
        self.pending: dict[int, dict[str, Any]] = {}
        self.last_logged: Optional[int] = None  # the highest epoch MLflow holds; None until it has answered
        self.down = False  # said once per outage
        self.flush()

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> Optional["EpochLogger"]:
        if not spec or not spec.get("run_id"):
            return None
        return cls(spec["uri"], spec["run_id"])

    def log_epoch(self, metrics: dict[str, Any]) -> bool:
        """Queue this epoch and send everything that waits (one try). True if nothing waits any more."""
        epoch = int(metrics["epoch"])
        if self.last_logged is None or epoch > self.last_logged:
            self.pending[epoch] = dict(metrics)
        return self.flush()

    def backfill(self, history: Iterable[dict[str, Any]]) -> bool:
        for h in history:
            epoch = int(h["epoch"])
            if self.last_logged is None or epoch > self.last_logged:
                self.pending.setdefault(epoch, dict(h))
        return self.flush()

    def close(self) -> bool:
        """At the end of the trial: wait (bounded) for the server to take what waits."""
        return self.flush(retry_budget_s() if self.retry_s is None else self.retry_s)

    def flush(self, budget_s: float = 0.0) -> bool:
        try:
            with_retry(self._send, budget_s)
        except Exception as e:
            if not self.down:
                self.down = True
                waiting = f"epochs {sorted(self.pending)}" if self.pending else "epochs"
                print(f"[largebatch] MLflow unreachable: {waiting} of run {self.run_id} wait to be logged "
                      f"({tracking_error(e)})", file=sys.stderr, flush=True)
            return False
        if self.down:
            self.down = False
            print(f"[largebatch] MLflow: logging to run {self.run_id} again", file=sys.stderr, flush=True)
        return True

    def _send(self) -> None:
        if self.last_logged is None:
            self.last_logged = max(_logged_epochs(self.client, self.run_id), default=-1)
        ts = int(time.time() * 1000)
        for epoch in sorted(self.pending):
            if epoch > self.last_logged:
                try:
                    self.client.log_batch(self.run_id, metrics=_epoch_metrics(self.pending[epoch], ts))
                except Exception as e:
                    if unreachable(e):
                        self.last_logged = None  # did it land? MLflow is asked before the next try
                        raise
                    print(f"[largebatch] MLflow refused epoch {epoch} of run {self.run_id}: {tracking_error(e)}",
                          file=sys.stderr, flush=True)  # it never will take it: not retried
                else:
                    self.last_logged = epoch
            del self.pending[epoch]

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            try:
                with_retry(lambda k=k, v=v: self.client.set_tag(self.run_id, k, str(v)[:5000]), 0.0)
            except Exception as e:
                print(f"[largebatch] MLflow: tag {k} of run {self.run_id} not logged ({tracking_error(e)})",
                      file=sys.stderr, flush=True)
