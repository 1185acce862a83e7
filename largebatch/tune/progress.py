"""Tune's callback hooks -> the study display (largebatch/console.py), on the driver.

Trials are named as their MLflow child runs are (`B=1024 sqrt warmup=2ep`, runtime.trial_label), computed here
from the trial's config, so the driver needs nothing from the trial processes but Tune's own results.

Tune pickles the RunConfig, callbacks included, into the run folder (for `Tuner.restore`) and deep-copies it: the
callback therefore carries no state of its own. It forwards to the display that is active in this process
(`activate()`), which a restored Tuner finds the same way.
"""
from __future__ import annotations

from typing import Any, Optional

from ray import tune

from largebatch.console import StudyDisplay
from largebatch.redact import redact_text
from largebatch.tune.runtime import StudyRuntime

_ACTIVE: Optional["_Study"] = None
_ENDED: Optional[list] = None  # Tune's trials when its loop ended with every trial finished (on_experiment_end)
_ERROR_TEXT_MAX = 64 * 1024  # bytes of a trial's error file read for its last line


class _Study:
    def __init__(self, display: StudyDisplay, runtime: "StudyRuntime"):
        self.display, self.runtime = display, runtime

    def describe(self, config: dict[str, Any]) -> tuple[str, bool, int]:
        """(readable name, is baseline, epochs) of a trial from its Tune config."""
        arm = config.get("arm", "search")
        try:
            spec, overrides = self.runtime.trial_spec(config)
            return redact_text(self.runtime.label(spec, overrides)), arm == "baseline", int(spec.res.epochs)
        except Exception:  # the trial itself reports a bad config; the display must not stop the study
            overrides = dict(config.get("overrides") or {})
            words = " ".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
            return (redact_text(f"{arm} {words}".strip()), arm == "baseline", 0)


def activate(display: StudyDisplay, runtime: "StudyRuntime") -> None:
    global _ACTIVE, _ENDED
    _ACTIVE, _ENDED = _Study(display, runtime), None


def deactivate() -> None:
    global _ACTIVE
    _ACTIVE = None


def failure_reason(trial) -> str:
    """The last line of the trial's error (our trainable raises RuntimeError(reason)), read as text, with the hint
    for a common cause (failures.py)."""
    from largebatch.failures import with_hint

    try:
        err = trial.get_error()
        text = str(err)[-_ERROR_TEXT_MAX:] if err is not None else ""
    except Exception:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else "the trial failed (see its error.txt in the run folder)"
    return redact_text(with_hint(last.removeprefix("RuntimeError: ")[:300]))  # an error may quote a URI


def ended_results() -> Optional[list]:
    """The study's trials as result records (config, metrics, checkpoint, error, path: what Tune's ResultGrid
    gives), if Tune's loop ran to its end with every trial finished; else None."""
    from types import SimpleNamespace

    if _ENDED is None:
        return None
    return [SimpleNamespace(config=t.config, metrics=dict(t.last_result or {}), checkpoint=t.checkpoint,
                            error=RuntimeError(f"trial {t.trial_id} failed") if t.status == "ERROR" else None,
                            path=t.path) for t in _ENDED]


class StudyProgress(tune.Callback):
    """Forwards Tune's trial events to the active display (no state: see the module docstring)."""

    def _start(self, trial) -> None:
        study = _ACTIVE
        if study is not None and trial.trial_id not in study.display.trials:
            name, is_baseline, epochs = study.describe(trial.config)
            study.display.trial_started(trial.trial_id, name, is_baseline, epochs)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._start(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._start(trial)
        if _ACTIVE is not None:
            _ACTIVE.display.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._start(trial)
        if _ACTIVE is not None:
            _ACTIVE.display.trial_finished(trial.trial_id, dict(trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._start(trial)
        if _ACTIVE is not None:
            _ACTIVE.display.trial_finished(trial.trial_id, dict(trial.last_result or {}),
                                           failed_reason=failure_reason(trial))

    def on_experiment_end(self, trials, **info):
        # Tune's loop is over; after this, Ray reads the results back from storage (tune/tune.py `run`)
        global _ENDED
        _ENDED = list(trials) if all(t.status in ("TERMINATED", "ERROR") for t in trials) else None

    def on_step_begin(self, iteration, trials, **info):
        # a resumed study: trials that finished before the driver died count as done (no line of their own)
        study = _ACTIVE
        if study is None:
            return
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR") and trial.trial_id not in study.display.trials:
                self._start(trial)
                study.display.trial_finished(trial.trial_id, dict(trial.last_result or {}),
                                             failed_reason="failed before" if trial.status == "ERROR" else None,
                                             quiet=True)

    def on_step_end(self, iteration, trials, **info):
        if _ACTIVE is not None:
            _ACTIVE.display.tick()


def create_callback():
    """A Tune callback feeding the active display."""
    return StudyProgress()
