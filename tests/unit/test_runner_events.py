"""The trial runner (train/runner.py) with a host of our own, no Ray; and the loop's events (train/events.py)."""
from __future__ import annotations

import contextlib
import shutil

import pytest
import torch

from largebatch.config import TrialConfig, resolve
from largebatch.data import load_dataset
from largebatch.tasks.classification import from_tensors
from largebatch.train import events
from largebatch.train.events import Event, State, Stop, fire
from largebatch.train.runner import Host, checkpoint_history, run_trial_here
from largebatch.train.spec import TrialSpec
from largebatch.vocab import Status


@pytest.fixture(scope="module")
def digits():
    return from_tensors(load_dataset("digits"))


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()  # the runner sets the trial's thread count
    yield
    torch.set_num_threads(before)


def _spec(data, epochs: int) -> TrialSpec:
    cfg = TrialConfig.model_validate({
        "data": {"dataset": "digits", "global_batch_size": 64}, "model": {"name": "mlp", "hidden_sizes": [16]},
        "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 64}, "budget": {"epochs": epochs}})
    return TrialSpec(res=resolve(cfg, 1, train_size=data.train_size))


class _Checkpoint:
    def __init__(self, path: str):
        self.path = path

    def as_directory(self):
        return contextlib.nullcontext(self.path)


class _Keeper:
    final_kept = "host:/kept"


class FakeHost(Host):
    def __init__(self, data, restore: str | None = None, keeper=None):
        self.data, self.restore, self.keeper = data, restore, keeper
        self.calls: list = []
        self.saved: list[str] = []

    def load_data(self, task, cfg):
        self.calls.append("load_data")
        return self.data

    def make_keeper(self):
        self.calls.append("make_keeper")
        return self.keeper

    def restore_checkpoint(self):
        return _Checkpoint(self.restore) if self.restore else None

    def on_checkpoint(self, ckpt_dir):
        self.calls.append(("on_checkpoint", len(checkpoint_history(ckpt_dir))))

    def report(self, keeper, metrics, ckpt_dir):
        assert keeper is self.keeper
        self.calls.append(("report", metrics["epoch"], bool(ckpt_dir)))
        if ckpt_dir:
            self.saved.append(ckpt_dir)

    def announce(self, res, logger):
        assert logger is None  # the spec names no MLflow run
        self.calls.append("announce")

    def unpersisted(self, final, keeper):
        self.calls.append(("unpersisted", final["epoch"], keeper.final_kept))


def test_the_runner_calls_its_host_in_order_and_resumes_from_its_checkpoint(digits):
    first = FakeHost(digits, keeper=_Keeper())
    final = run_trial_here(_spec(digits, 2), first)
    assert final["epoch"] == 1 and final["status"] == Status.COMPLETED
    assert first.calls == ["load_data", "make_keeper", "announce", ("report", 0, False), ("on_checkpoint", 2),
                           ("report", 1, True), ("unpersisted", 1, "host:/kept")]
    resumed = FakeHost(digits, restore=first.saved[-1])
    final = run_trial_here(_spec(digits, 3), resumed)
    assert final["epoch"] == 2
    assert resumed.calls == ["load_data", "make_keeper", ("on_checkpoint", 2), "announce", ("on_checkpoint", 3),
                             ("report", 2, True)]
    for d in first.saved + resumed.saved:
        shutil.rmtree(d, ignore_errors=True)


def test_the_runner_checks_the_spec_against_the_hosts_world(digits):
    host = FakeHost(digits)
    host.world = 2
    with pytest.raises(RuntimeError, match="resolved for 1 worker"):
        run_trial_here(_spec(digits, 1), host)


def test_the_first_stop_wins_and_the_later_handlers_still_run(monkeypatch):
    ran: list[str] = []

    def stop(name, status):
        def handler(st):
            ran.append(name)
            return Stop(status, name) if status else None
        return handler

    monkeypatch.setitem(events.HANDLERS, Event.EPOCH_END, (stop("a", None), stop("b", Status.DIVERGED.value),
                                                           stop("c", Status.STOPPED_EARLY.value), stop("d", None)))
    st = State(cfg=None, res=None, ctx=None, task=None, model=None, opt=None, scaler=None, auto={})
    assert fire(Event.EPOCH_END, st)
    assert ran == ["a", "b", "c", "d"]
    assert (st.status, st.reason) == (Status.DIVERGED, "b")


def test_the_event_table_names_each_handler_once_in_the_loops_order():
    assert [h.__name__ for h in events.HANDLERS[Event.CHECK]] == ["divergence"]
    assert [h.__name__ for h in events.HANDLERS[Event.EPOCH_END]] == ["target", "best_values", "stop_at_target"]
    assert [h.__name__ for h in events.HANDLERS[Event.RECORDED]] == ["log_line", "checkpoint", "report"]
