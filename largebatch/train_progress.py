"""`largebatch train`: one progress bar over the trial's epochs with its metric (plain lines when not a terminal).

The epochs are reported on the Train controller, not here: a `ray.train.UserCallback` there forwards rank 0's
metrics through a Ray queue (a zero-CPU actor) to a thread in the driver, which draws the bar while `fit()`
blocks the main thread.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, TextIO

from largebatch.console import fmt_duration, fmt_metric, wants_live
from largebatch.vocab import Status

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class EpochBar:
    """The bar (a terminal) or one line per epoch (`epoch 2/40  loss ...  val_acc 91.20%  ...`)."""

    def __init__(self, name: str, epochs: int, metric: str = "val_acc", live: Optional[bool] = None,
                 out: TextIO = sys.stdout):
        self.name, self.epochs, self.metric, self.out = name, epochs, metric, out
        self.live = wants_live(out) if live is None else live
        self.t0 = time.time()
        self._progress: Optional[Progress] = None
        self._task: Optional[TaskID] = None

    def start(self) -> "EpochBar":
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("epochs"), TextColumn("{task.fields[metrics]}"),
                                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                      console=Console(file=self.out), transient=False)
            self._task = self._progress.add_task(self.name, total=self.epochs, metrics="starting Ray Train ...")
            self._progress.start()
        return self

    def update(self, m: dict[str, Any]) -> None:
        epoch = int(m.get("epoch", 0)) + 1  # the loop reports 0-based epochs
        words = f"loss {m['train_loss']:.4f}  " if isinstance(m.get("train_loss"), (int, float)) else ""
        words += f"{self.metric} {fmt_metric(self.metric, m.get(self.metric))}"
        if isinstance(m.get("throughput"), (int, float)):
            words += f"  {m['throughput']:,.0f} ex/s"
        if m.get("status") == Status.DIVERGED:
            words += f"  diverged: {m.get('reason', '')}"
        if self._progress is not None:
            assert self._task is not None  # start() sets both
            self._progress.update(self._task, completed=epoch, metrics=words)
        else:
            print(f"epoch {epoch}/{self.epochs}  {words}  [{fmt_duration(time.time() - self.t0)}]", file=self.out,
                  flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _callback_class():
    from ray.train import UserCallback

    class ReportToDriver(UserCallback):
        """On the Train controller: rank 0's metrics of each report into the driver's queue."""

        def __init__(self, queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint):
            if metrics:
                try:
                    self.queue.put_nowait(dict(metrics[0]))
                except Exception:  # the display is not worth failing a training run for
                    pass

    return ReportToDriver


class TrainProgress:
    """Context manager: `with TrainProgress(name, epochs) as p: make_trainer(..., callbacks=[p.callback])`."""

    def __init__(self, name: str, epochs: int, metric: str = "val_acc", live: Optional[bool] = None):
        self.bar = EpochBar(name, epochs, metric, live)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "TrainProgress":
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.callback = _callback_class()(self.queue)
        self.bar.start()
        self._thread = threading.Thread(target=self._drain, name="largebatch-epoch-bar", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self.bar.update(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception:  # Ray is shutting down under us
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:  # the last epochs may still be on their way
            while not self.queue.empty():
                self.bar.update(self.queue.get_nowait())
        except Exception:
            pass
        self.bar.stop()
        try:
            self.queue.shutdown()
        except Exception:
            pass
