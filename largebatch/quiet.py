"""Ray and MLflow say only what matters unless `--verbose`: each noisy source is turned off by its own setting.

Where each line came from, and the switch that turns it off (Ray 2.60, MLflow 3.17):

- Tune's config/status tables, "Trial ... started with configuration", the TensorBoard hint: Tune's new output
  engine (ray/tune/experimental/output.py) prints its experiment header even at verbose=0, so the old engine is
  chosen (RAY_AIR_NEW_OUTPUT=0) and run at verbose=0 (RunConfig(verbose=...), see `tune_verbose()`), where it
  prints nothing.
- Tune's "Trial task failed for trial tune_trial_..." traceback: TUNE_PRINT_ALL_TRIAL_ERRORS=0; the study's
  display reports each failed trial once, by its readable name and reason (the traceback stays in the trial's
  error.txt and the MLflow run's `reason` tag).
- Train's "Requesting resources", "Started training worker group", "Setting up process group", "Checkpoint
  successfully created", "Reporting training result": Ray Train's own logger, at the level of
  `ray.train.RunConfig(logging_config=LoggingConfig(log_level=...))` (`train_log_level()`).
- Every worker's stdout/stderr echoed on the driver, twice for DDP ranks: `ray.init(log_to_driver=False)`. It all
  still lands in the session's log files. The local head then runs without Ray's log monitor (the process that
  feeds those lines to drivers); --verbose starts it (largebatch/raylib.py).
- "Connecting to existing Ray cluster", "Connected to Ray cluster": the driver's `ray` logger, set by
  `ray.init(logging_level=...)`.
- core_worker.cc "E" lines about a `PreemptionWatcher`: Ray Train starts that actor to follow node preemption
  (spot instances draining); the local head's one node is never preempted, so the local head runs without it
  (RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0). A real cluster keeps it.
- MLflow's "Creating initial MLflow database tables": MLFLOW_LOGGING_LEVEL=WARNING (read when mlflow is imported).
- MLflow's "Downloading artifacts" bar on stderr when a study's records are read back (`largebatch report`, the
  report at a study's end): MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false.
- Tune's "The `callbacks.on_step_end` operation took 0.773 s, which may be a performance bottleneck": Tune times
  each of its steps against TUNE_WARN_THRESHOLD_S (0.5 s); on a loaded 2-core machine any step can stall that
  long, so the threshold is 10 s: a stall that long is still reported.
- Tune's "Experiment state snapshotting has been triggered multiple times": Tune snapshots the study's state when a
  trial has saved `num_to_keep` checkpoints since the last snapshot, and short in-process trials checkpoint often;
  the snapshot is cheap on local disk, the advice is not for the user (TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_
  SYNC_THRESHOLD_S=0).
- Tune's "Remote file not found: .../result.json" each time a trial paused at a rung (tuner.scheduler: sha) resumes:
  Tune's result-file loggers look for their earlier files in storage, where they were never uploaded; the trial's
  results are in MLflow and its checkpoint in storage, so nothing is lost (the "ray.tune.logger.logger" logger at
  ERROR).

Warnings and errors still show: every level above stays at WARNING, except the duplicates and the notice named above.
`--verbose` leaves Ray's and MLflow's defaults untouched. A variable the user set himself is never overridden.
"""
from __future__ import annotations

import logging
import os
import sys

_verbose: bool | None = None  # None: not configured yet (library use): quiet, as configure(False)

VERBOSE_ENV = "LARGEBATCH_VERBOSE"
# read by the driver process itself
DRIVER_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0", "MLFLOW_LOGGING_LEVEL": "WARNING",
              "TUNE_WARN_THRESHOLD_S": "10", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# read by the processes of our own local head (trial drivers, Train controllers and workers)
TUNE_RESULT_FILES_LOGGER = "ray.tune.logger.logger"  # "Remote file not found" on resuming a paused trial
LOCAL_HEAD_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def configure(verbose: bool) -> None:
    """Call once, before Ray or MLflow are imported (the CLI does it first thing)."""
    global _verbose
    _verbose = verbose
    if verbose:
        # Ray processes of the local head inherit it: the trial's Train controller and workers follow suit
        os.environ[VERBOSE_ENV] = "1"
        logging.getLogger(TUNE_RESULT_FILES_LOGGER).setLevel(logging.NOTSET)
        return
    os.environ.pop(VERBOSE_ENV, None)
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger(TUNE_RESULT_FILES_LOGGER).setLevel(logging.ERROR)
    if "mlflow" in sys.modules:  # imported already: its logger read the variable too early
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])


def ensure() -> None:
    """Quiet defaults for callers that never ran configure() (tests, benchmarks, the Python API)."""
    if _verbose is None:
        configure(os.environ.get(VERBOSE_ENV) == "1")


def is_verbose() -> bool:
    return bool(_verbose)


def local_head_env() -> dict[str, str]:
    """Extra environment for the local head (every Ray process it starts inherits it)."""
    ensure()
    return {} if _verbose else {k: os.environ.get(k, v) for k, v in LOCAL_HEAD_ENV.items()}


def ray_init_kwargs() -> dict:
    ensure()
    return {"log_to_driver": _verbose, "logging_level": logging.INFO if _verbose else logging.WARNING}


def train_log_level() -> str:
    """Ray Train's `ray.train` logger on its controller and workers."""
    ensure()
    return "INFO" if _verbose else "WARNING"


def tune_verbose() -> int:
    """RunConfig(verbose=): 1 is Tune's default status output, 0 prints nothing (with the old engine)."""
    ensure()
    return 1 if _verbose else 0
