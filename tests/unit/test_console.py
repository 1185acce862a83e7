"""The study display without Ray: plain lines, the best-so-far line, the ETA, the live rendering, quiet settings."""
from __future__ import annotations

import io

import pytest

from largebatch import quiet
from largebatch.console import StudyDisplay, fmt_duration, fmt_metric


def _result(epoch, acc, **kw):
    return {"epoch": epoch, "val_acc": acc - 0.01, "best_val_acc": acc, "throughput": 12000.0, "wall_s": 1.5,
            "time_total_s": 15.0, "status": "completed", "is_final": True, **kw}


def _display(**kw) -> tuple[StudyDisplay, io.StringIO]:
    out = io.StringIO()
    return StudyDisplay(title="demo", total=4, out=out, **kw), out


def test_plain_lines_one_per_finished_trial():
    d, out = _display()
    d.trial_started("a", "baseline B=32 none warmup=0ep", is_baseline=True, epochs=4)
    d.trial_started("b", "B=1024 sqrt warmup=2ep", epochs=4)
    d.trial_started("c", "B=4096 linear warmup=0ep", epochs=4)
    d.trial_result("b", _result(1, 0.5, is_final=False))
    assert out.getvalue() == ""  # intermediate results print nothing in plain mode
    d.trial_finished("a", _result(3, 0.9))
    d.trial_finished("b", _result(3, 0.8786))
    d.trial_finished("c", {"epoch": 0, "status": "diverged", "reason": "loss 401 above budget at step 4"})
    d.trial_finished("c", {})  # a second event for the same trial is ignored
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[1].split() == ["done", "2/4", "B=1024", "sqrt", "warmup=2ep", "best_val_acc", "87.86%", "15.0", "s",
                                "(training", "1.5", "s)"]
    assert lines[2].startswith("diverged") and lines[2].endswith("B=4096 linear warmup=0ep: loss 401 above budget "
                                                                 "at step 4")


def test_failed_and_stopped_trials_say_so():
    d, out = _display()
    d.trial_started("a", "B=64 none warmup=0ep", epochs=4)
    d.trial_started("b", "B=128 none warmup=0ep", epochs=4)
    d.trial_finished("a", {}, failed_reason="node out of memory: 22.4 of 23.5 GB used")
    d.trial_finished("b", _result(1, 0.7, is_final=False))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("failed") and "B=64 none warmup=0ep: node out of memory" in lines[0]
    assert lines[1].startswith("stopped") and "at epoch 2/4" in lines[1]


def test_best_so_far_against_the_baseline():
    d, _ = _display()
    assert "no searched trial finished yet" in d.best_line() and "baseline: not finished yet" in d.best_line()
    d.trial_started("base", "baseline B=32 none warmup=0ep", is_baseline=True, epochs=2)
    d.trial_started("x", "B=512 linear warmup=1ep", epochs=2)
    d.trial_started("y", "B=1024 sqrt warmup=2ep", epochs=2)
    d.trial_finished("base", _result(1, 0.95, wall_s=6.0))
    d.trial_finished("x", _result(1, 0.90, wall_s=1.0))
    d.trial_finished("y", _result(1, 0.9528, wall_s=2.0))
    line = d.best_line()
    assert line.startswith("best so far: B=1024 sqrt warmup=2ep  best_val_acc 95.28%")
    # the gap as the report gives it (positive = worse than the baseline): B=1024 is 0.28 points better
    assert "baseline B=32 none warmup=0ep  95.00%" in line and "gap -0.28 pt" in line
    assert "3.0x faster training" in line  # no per-epoch curves and no profile: the runs' measured training time


def test_a_lower_is_better_metric_picks_the_lowest():
    d, out = _display(metric="val_bpb", score="best_val_bpb", mode="min")
    d.trial_started("base", "baseline B=32 none warmup=0ep", is_baseline=True, epochs=2)
    d.trial_started("x", "B=256 none warmup=0ep", epochs=2)
    d.trial_started("y", "B=256 linear warmup=0.5ep", epochs=2)
    d.trial_finished("base", {"epoch": 1, "best_val_bpb": 2.655, "wall_s": 8.0, "status": "completed"})
    d.trial_finished("x", {"epoch": 1, "best_val_bpb": 3.246, "wall_s": 4.0, "status": "completed"})
    d.trial_finished("y", {"epoch": 1, "best_val_bpb": 2.756, "wall_s": 5.0, "status": "completed"})
    line = d.best_line()
    assert line.startswith("best so far: B=256 linear warmup=0.5ep  best_val_bpb 2.756"), line
    assert "(gap +0.101" in line  # 0.101 bits per byte worse, in the metric's units (absolute)
    assert "best_val_bpb 3.246" in out.getvalue()


def test_running_rows_show_the_tuner_metric_finished_ones_the_report_score():
    d, _ = _display(metric="val_loss")
    d.trial_started("a", "A", epochs=2)
    d.trial_result("a", {"epoch": 0, "val_loss": 0.25, "best_val_acc": 0.5})
    assert d.trials["a"].metric == 0.25
    d.trial_started("b", "B", epochs=1)
    d.trial_finished("b", {"epoch": 0, "val_loss": 0.3, "best_val_acc": 0.9, "status": "completed"})
    assert d.best()[0].name == "B" and "best_val_acc 90.00%" in d.best_line()


def test_eta_from_measured_seconds_per_epoch_and_status_line_is_rate_limited(monkeypatch):
    # the ETA is (trial-epochs left) x (seconds per epoch the finished trials took) / (trials at once), re-estimated
    # at each event and counting down between them (it used to be elapsed x left / done: it counted up while a
    # trial ran, issue #28)
    clock = [1000.0]
    monkeypatch.setattr("largebatch.console.time.time", lambda: clock[0])
    d, out = _display(status_every_s=30.0, slots=2)
    d.t0 = clock[0] - 100  # 100 s in
    d.trial_started("a", "A", epochs=4)
    d.trial_started("b", "B", epochs=4)
    assert d.eta_s() is None  # no epoch measured yet
    d.trial_result("b", _result(0, 0.7, time_total_s=5.0))  # running trials' epochs, before any trial finished
    assert d.epoch_s() == pytest.approx(5.0)
    d.trial_finished("a", _result(3, 0.9))  # 15 s for 4 epochs: 3.75 s an epoch
    d.trial_result("b", _result(1, 0.8))  # 2 of 4 epochs
    assert d.epoch_s() == pytest.approx(3.75)
    # left: B's 2 epochs + 2 trials not started x 4 epochs = 10 trial-epochs, 2 at a time
    assert d.work_left() == 10 and d.eta_s() == pytest.approx(10 * 3.75 / 2)
    d.tick()
    assert "status" not in out.getvalue()  # a line was just printed
    clock[0] += 10  # a trial runs, nothing reports: the ETA counts down, never up
    assert d.eta_s() == pytest.approx(10 * 3.75 / 2 - 10)
    clock[0] += 21
    d.tick()
    status = out.getvalue().splitlines()[-1]
    assert status.startswith("status  [2:11] 1/4 done, running: B epoch 2/4, about 0:00 left")


def test_live_view_renders_bar_rows_and_best_line():
    from rich.console import Console

    d, _ = _display()
    d.trial_started("a", "baseline B=32 none warmup=0ep", is_baseline=True, epochs=4)
    d.trial_started("b", "B=1024 sqrt warmup=2ep", epochs=4)
    d.trial_finished("a", _result(3, 0.9))
    d.trial_result("b", _result(1, 0.8))
    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None).print(d._renderable())
    text = buf.getvalue()
    assert "1/4 trials" in text and "elapsed" in text and "ETA" in text and "━" in text
    assert "B=1024 sqrt warmup=2ep" in text and "2/4" in text and "79.00%" in text and "12,000" in text
    assert "best so far" in text


@pytest.mark.parametrize("value,text", [(0.87857, "87.86%"), (None, "-"), (float("nan"), "-")])
def test_fmt_metric(value, text):
    assert fmt_metric("val_acc", value) == text


def test_fmt_duration():
    assert [fmt_duration(s) for s in (5, 125, 3723)] == ["0:05", "2:05", "1:02:03"]


def test_quiet_settings_follow_verbose(monkeypatch):
    for key in (*quiet.DRIVER_ENV, quiet.VERBOSE_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # a user's own choice is kept
    try:
        quiet.configure(False)
        import os

        assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0" and os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
        assert quiet.ray_init_kwargs()["log_to_driver"] is False and quiet.train_log_level() == "WARNING"
        assert quiet.local_head_env()["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0" and quiet.tune_verbose() == 0
        import logging

        assert logging.getLogger(quiet.TUNE_RESULT_FILES_LOGGER).getEffectiveLevel() == logging.ERROR
        quiet.configure(True)
        assert logging.getLogger(quiet.TUNE_RESULT_FILES_LOGGER).getEffectiveLevel() < logging.ERROR
        assert quiet.ray_init_kwargs()["log_to_driver"] is True and quiet.train_log_level() == "INFO"
        assert quiet.local_head_env() == {} and os.environ[quiet.VERBOSE_ENV] == "1"
    finally:
        quiet.configure(False)
        monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)


def test_ui_links_open_the_model_training_runs_view():
    from largebatch.ui import runs_url

    assert runs_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert runs_url("http://h:1", None) == "http://h:1/#/experiments?workflowType=machine_learning"


def test_tune_callback_survives_the_pickling_of_tuner_restore():
    """Tune pickles the RunConfig (callbacks included) for `Tuner.restore`: the copy feeds the active display."""
    import copy
    import pickle

    from largebatch.tune import progress

    d, out = _display()
    from largebatch.tune.runtime import StudyRuntime

    runtime = StudyRuntime(base_tree={}, baseline_tree={}, source="x.yaml", seeds=(0,), workers_per_trial=1,
                           cpus_per_worker=1, use_gpu=False, max_failures=0, train_sizes={}, tracking_uri="",
                           experiment_id="", parent_run_id="", run_name="", storage_path="")
    restored = pickle.loads(pickle.dumps(copy.deepcopy(progress.create_callback())))
    progress.activate(d, runtime)
    try:
        trial = type("T", (), {"trial_id": "t1", "config": {"arm": "search", "overrides": {"optim.base_lr": 0.1}},
                               "last_result": {"status": "completed", "best_val_acc": 0.5}, "status": "TERMINATED"})()
        restored.on_trial_complete(0, [trial], trial)
    finally:
        progress.deactivate()
    assert d.finished == 1 and "base_lr=0.1" in out.getvalue()  # an unparsable trial: named from its overrides


def test_train_epoch_bar_plain_and_live():
    from largebatch.train_progress import EpochBar

    out = io.StringIO()
    bar = EpochBar("B=32 none", 4, live=False, out=out).start()
    bar.update({"epoch": 1, "train_loss": 0.1778, "val_acc": 0.9639, "throughput": 6517.2})
    bar.update({"epoch": 2, "train_loss": 9e3, "val_acc": 0.1, "status": "diverged", "reason": "loss 9e+03 at step 3"})
    bar.stop()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 2/4  loss 0.1778  val_acc 96.39%  6,517 ex/s  [")
    assert lines[1].startswith("epoch 3/4") and "diverged: loss 9e+03 at step 3" in lines[1]

    out = io.StringIO()
    bar = EpochBar("B=32 none", 4, live=True, out=out).start()
    bar.update({"epoch": 1, "train_loss": 0.1778, "val_acc": 0.9639, "throughput": 6517.2})
    bar.stop()
    text = out.getvalue()
    assert "B=32 none" in text and "2/4" in text and "val_acc 96.39%" in text and "━" in text


def test_run_description_leads_with_the_tasks_own_metric():
    from largebatch.tracking import trial_note

    note = trial_note("completed", {"best_val_bpb": 2.7561, "best_val_loss": 1.91, "wall_s": 5.0, "steps": 256})
    assert note.startswith("best_val_bpb 2.756 · best_val_loss 1.91 · training 5.0 s"), note
    assert trial_note("completed", {"best_val_acc": 0.9694}).startswith("best_val_acc 96.94%")


# ----------------------------------------------------------------------------- issue #26: the report's basis
def _epochs(d, key, batch, accs, steps_per_epoch, **final):
    """A trial's per-epoch results (val_acc, steps so far, its batch), then its end with best_val_acc."""
    for e, acc in enumerate(accs):
        d.trial_result(key, {"epoch": e, "val_acc": acc, "best_val_acc": max(accs[:e + 1]), "wall_s": 10.0 * (e + 1),
                             "steps": steps_per_epoch * (e + 1), "global_batch_size": batch})
    d.trial_finished(key, {"epoch": len(accs) - 1, "val_acc": accs[-1], "best_val_acc": max(accs),
                           "steps": steps_per_epoch * len(accs), "global_batch_size": batch, "status": "completed",
                           "wall_s": 10.0 * len(accs), **final})


def _study(step_s, **kw):
    d, _ = _display(step_s=step_s, **kw)
    d.trial_started("base", "baseline B=32 none warmup=0ep", is_baseline=True, epochs=3)
    d.trial_started("lin", "B=128 linear warmup=0ep", epochs=3)
    d.trial_started("none", "B=128 none warmup=0ep", epochs=3)
    # the baseline: 96.39% best; the target is 95.89% (0.5 points below), which it meets at epoch 2 (200 steps)
    _epochs(d, "base", 32, [0.90, 0.960, 0.9639], 100)
    return d


def test_best_so_far_is_the_soonest_to_the_baseline_quality_on_the_projected_basis():
    # B=128 linear: best accuracy, but it meets 95.89% only at its last epoch; B=128 none meets it at epoch 2
    d = _study({32: 0.001, 128: 0.002})
    _epochs(d, "lin", 128, [0.90, 0.95, 0.9694], 25)
    _epochs(d, "none", 128, [0.93, 0.9600, 0.961], 25)
    line = d.best_line()
    # baseline: 200 steps x 1 ms = 0.2 s; B=128 none: 50 steps x 2 ms = 0.1 s -> 2.0x sooner; linear: 0.15 s
    assert line.startswith("best so far: B=128 none warmup=0ep  best_val_acc 96.10%, 0.1 s projected to 95.89%"), line
    assert "baseline B=32 none warmup=0ep  96.39%, 0.2 s to 95.89%" in line
    assert "(gap +0.29 pt, 2.0x sooner to 95.89%, projected)" in line


def test_when_nothing_beats_the_baseline_it_says_keep_the_baseline():
    # the case: B=128 linear trains faster in wall-clock, but on the profile it reaches the target later
    d = _study({32: 0.001, 128: 0.004})
    _epochs(d, "lin", 128, [0.90, 0.9600, 0.9694], 25, wall_s=5.0)  # 50 steps x 4 ms = 0.2 s: a tie, 1.00x
    line = d.best_line()
    assert "keep the baseline" in line and "faster" not in line and "sooner" not in line, line
    assert "(gap -0.55 pt, 1.00x the baseline's speed: keep the baseline)" in line
    # one outside the tolerance never counts as the best, however soon it gets somewhere
    d = _study({32: 0.001, 128: 0.001})
    _epochs(d, "none", 128, [0.80, 0.85, 0.90], 25)
    line = d.best_line()
    assert "gap +6.39 pt" in line and "none within tolerance reaches 95.89% yet: keep the baseline" in line, line


def test_without_a_profile_the_basis_is_the_measured_wallclock_at_the_target_and_gaps_follow_the_units():
    d = _study({}, units="relative", tolerance=0.01)  # 1% of 96.39% below it: 95.43%
    _epochs(d, "lin", 128, [0.96, 0.962, 0.9694], 25)
    line = d.best_line()
    assert "10 s measured to 95.43%" in line and "20 s to 95.43%" in line, line  # wall_s at the crossing epochs
    assert "(gap -0.6%, 2.0x sooner to 95.43%, measured)" in line


def test_a_failed_trials_line_carries_the_hint_for_a_non_scalar_loss():
    from largebatch.tune.progress import failure_reason

    err = RuntimeError("Traceback ...\nRuntimeError: grad can be implicitly created only for scalar outputs")
    trial = type("T", (), {"get_error": lambda self: err})()
    assert failure_reason(trial) == ("grad can be implicitly created only for scalar outputs; the task's loss must "
                                     "be a scalar mean over the batch: reduce it with .mean()")


def test_wants_live_asks_the_current_stdout(monkeypatch):
    """Not the one at import: a study run after a test captured (and closed) stdout must not fail on it."""
    import sys

    from largebatch.console import wants_live

    tty = type("Tty", (io.StringIO,), {"isatty": lambda self: True})()
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.setenv("TERM", "xterm")
    assert wants_live()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert not wants_live()
