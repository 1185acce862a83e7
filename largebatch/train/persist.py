"""Checkpoints that the study's storage cannot take right now (docs/design.md §10, issue #15).

A trial whose storage (s3://, or any `--storage`) goes away keeps training. Each epoch is still reported with its
metrics (MLflow logging is not touched: the caller logs first); a checkpoint storage does not take is kept on local
disk (`kept_root()`, the newest one only: older ones are superseded) and the next checkpoint tries storage again.
When a later checkpoint is persisted, the local copy goes: Ray now holds a newer one, and a restarted trial resumes
from it. The last checkpoint of a trial has no next one: storage gets a bounded wait for it
(LARGEBATCH_STORAGE_RETRY_S, default 60 s, backoff 1 s doubling to 10 s); after that the trial ends anyway, with
its local copy named on stderr, on its MLflow run (tag `UNPERSISTED_TAG`) and in its last Tune result
(`KEPT_KEY`).

Bounds: disk, one checkpoint per trial; time, each checkpoint first asks storage whether it answers
(`probe_storage`: one metadata request, given PROBE_TIMEOUT_S = 3 s) and only then copies, so while storage is down a
checkpoint costs the training loop at most 3 s, not pyarrow's own retries (measured with pyarrow's S3 defaults:
6 s per call against a refused port, 99 s per call against an endpoint that accepts and never answers). Every
checkpoint tries once (so the first one after storage returns is persisted); only the last one waits.

How a checkpoint reaches storage without Ray's bookkeeping going wrong differs between the two trial runners (the
Ray 2.60 facts are at each backend, or at the largebatch/raycompat.py function it calls): `TrainBackend` for a Ray
Train worker (train/ray_worker.py), `TuneBackend` for an in-process trial (train/inprocess.py).
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, cast

from largebatch import raycompat
from largebatch.redact import redact_text

RETRY_S_ENV = "LARGEBATCH_STORAGE_RETRY_S"  # how long the last checkpoint of a trial waits for storage
DEFAULT_RETRY_S = 60.0
PROBE_TIMEOUT_S = 3.0
KEPT_KEY = "checkpoint_kept_at"  # in the Tune result of an epoch whose checkpoint storage did not take: host:path
UNPERSISTED_TAG = "largebatch.unpersisted_checkpoint"  # on the trial's MLflow run: the final one was not persisted
# Ray writes this marker when it sets a run's storage up and checks it before every checkpoint copy
# (ray/train/_internal/storage.py and ray/train/v2/_internal/execution/storage.py, `_check_validation_file`)
MARKER = ".validate_storage_marker"


def retry_budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_S_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        return DEFAULT_RETRY_S


def kept_root() -> Path:
    """Where checkpoints storage did not take are kept: $LARGEBATCH_CACHE/unpersisted (~/.cache/largebatch/...)."""
    return Path(os.environ.get("LARGEBATCH_CACHE", Path.home() / ".cache" / "largebatch")) / "unpersisted"


def private_dirs(top: Path, path: Path) -> None:
    """Every folder from `top` down to `path` made or checked private (model state goes in them): created 0700; an
    existing one must be a real folder (a symlink is refused) owned by this user, and is made 0700. The folder that
    holds `top` (e.g. a shared /tmp named by LARGEBATCH_CACHE) must be this user's or root's, and sticky if anyone
    may write to it, so nobody else can swap a folder of ours for a link. OSError when a check fails."""
    import stat

    top.parent.mkdir(parents=True, exist_ok=True)
    st = os.stat(top.parent)
    if st.st_uid not in (os.getuid(), 0) or (st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX):
        raise PermissionError(f"{top.parent} is not this user's (or anyone may write to it and it is not sticky); set "
                              f"LARGEBATCH_CACHE to a folder of your own")
    rel = path.relative_to(top)
    for d in [top, *(top / p for p in reversed(rel.parents[:-1])), *([path] if rel.parts else [])]:
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{d} is not a folder of this user's (a link, a file, or someone else's)")
        if st.st_mode & 0o077:
            os.chmod(d, 0o700)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return redact_text(f"{type(e).__name__}: {text[0] if text else ''}")[:300]


class StorageFailure(Exception):
    """Storage did not take the checkpoint, and the report was not made: the epoch is to be reported without it."""


class Backend(Protocol):
    where: str  # the storage URI the checkpoints go to, for messages (credentials masked)
    name: str   # the run or trial, for the local folder

    def probe(self) -> Optional[str]: ...  # None: storage answers; else why not, in one line

    def report_with_checkpoint(self, metrics: dict, ckpt_dir: str) -> None: ...  # StorageFailure: nothing reported

    def report_metrics(self, metrics: dict) -> None: ...


def probe_storage(fs, fs_path: str, timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None if `fs` (a pyarrow filesystem: Ray's own for the run) shows `fs_path` within timeout_s, else why not.
    The call runs in a daemon thread: an endpoint that never answers holds that thread (pyarrow gives up on its own
    after its retries), not the training loop."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["info"] = fs.get_file_info(fs_path)
        except BaseException as e:  # noqa: BLE001 - any failure of the call is the answer
            box["error"] = e

    th = threading.Thread(target=run, name="largebatch-storage-probe", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        return f"no answer in {timeout_s:g} s"
    if "error" in box:
        return one_line(box["error"])
    import pyarrow.fs

    if box["info"].type == pyarrow.fs.FileType.NotFound:
        return f"{fs_path} is missing (the run's storage marker: Ray refuses to copy a checkpoint without it)"
    return None


def storage_where(storage) -> tuple[str, str]:
    """(URI for messages, filesystem path of the marker) of a Ray StorageContext (Train v1/Tune or Train v2)."""
    fs_type = getattr(storage.storage_filesystem, "type_name", "")
    exp = storage.experiment_fs_path
    uri = f"{fs_type}://{exp}" if fs_type and fs_type != "local" else exp
    return redact_text(uri), f"{exp}/{MARKER}"


class CheckpointKeeper:
    """Reports each epoch through a Backend: with its checkpoint when storage takes it, else without, keeping the
    checkpoint locally (newest only) until a later one is persisted. Never raises for storage; other errors pass."""

    def __init__(self, backend: Backend, *, retry_s: Optional[float] = None,
                 clock: Optional[Callable[[], float]] = None, sleep: Optional[Callable[[float], None]] = None,
                 log: Optional[Callable[[str], None]] = None, root: Optional[Path] = None):
        self.backend = backend
        self.retry_s = retry_budget_s() if retry_s is None else retry_s
        self.clock, self.sleep = clock or time.monotonic, sleep or time.sleep
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.root = root or kept_root()
        self.dir = self.root / backend.name
        self.kept: Optional[Path] = None       # the local copy of the newest checkpoint storage did not take
        self.kept_epoch: Optional[int] = None
        self.down = False                      # said once per outage
        self.final_kept: Optional[str] = None  # host:path of the trial's last checkpoint, if storage never took it

    def report(self, metrics: dict, ckpt_dir: Optional[str]) -> None:
        if not ckpt_dir:
            self.backend.report_metrics(metrics)
            return
        epoch, final = int(metrics.get("epoch", -1)), bool(metrics.get("is_final"))
        reason = self._persist(metrics, ckpt_dir, self.retry_s if final else 0.0)
        if reason is None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # storage holds its copy
            if self.down:
                self.log(f"[largebatch] storage {self.backend.where} takes checkpoints again (epoch {epoch + 1})"
                         + (f"; the local copy of epoch {self.kept_epoch + 1} is removed"
                            if self.kept_epoch is not None else ""))  # set and cleared with self.kept
            self.down = False
            self._drop_kept()
            return
        kept = self._keep(ckpt_dir, epoch)
        where = f"{socket.gethostname()}:{kept}" if kept is not None else "nowhere (local disk refused it too)"
        if final:
            self.final_kept = where
            self.log(f"[largebatch] storage {self.backend.where} did not take the last checkpoint (epoch {epoch + 1}) "
                     f"within {self.retry_s:g} s ({reason}): it is kept at {where}; the trial's metrics are all "
                     f"reported")
        elif not self.down:
            self.log(f"[largebatch] storage {self.backend.where} did not take the checkpoint of epoch {epoch + 1} "
                     f"({reason}); training goes on: the newest checkpoint is kept at {where} and each later "
                     f"checkpoint tries storage again")
        self.down = True
        self.backend.report_metrics({**metrics, KEPT_KEY: where})

    def _persist(self, metrics: dict, ckpt_dir: str, budget_s: float) -> Optional[str]:
        """None once storage took the checkpoint (and the epoch was reported with it), else the last reason.
        Retried with backoff while budget_s lasts (0: one try)."""
        deadline = self.clock() + budget_s
        delay = 1.0
        while True:
            reason = self.backend.probe()
            if reason is None:
                try:
                    self.backend.report_with_checkpoint(metrics, ckpt_dir)
                    return None
                except StorageFailure as e:
                    reason = one_line(e.__cause__ or e)
            if self.clock() + delay > deadline:
                return reason
            self.sleep(delay)
            delay = min(2 * delay, 10.0)

    def _keep(self, ckpt_dir: str, epoch: int) -> Optional[Path]:
        """Move the checkpoint to this trial's local folder, which then holds it alone (an older one, of this
        process or of one that was killed before it, is superseded)."""
        dest = self.dir / f"epoch-{epoch + 1:05d}"
        try:
            private_dirs(self.root, self.dir)  # 0700, ours, no links: nobody else reads or redirects model state
            for old in self.dir.iterdir():
                shutil.rmtree(old, ignore_errors=True)
            shutil.move(ckpt_dir, dest)
            os.chmod(dest, 0o700)
        except OSError as e:  # no local disk either: the epoch still counts, its checkpoint is lost
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            self.log(f"[largebatch] could not keep the checkpoint of epoch {epoch + 1} in {self.dir} ({one_line(e)})")
            self.kept, self.kept_epoch = None, None
            return None
        self.kept, self.kept_epoch = dest, epoch
        return dest

    def _drop_kept(self) -> None:
        """Storage holds a newer checkpoint: the local folder goes (with anything a killed process left there)."""
        if self.kept is not None or self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            for parent in list(self.dir.parents)[: len(Path(self.backend.name).parts) - 1]:
                try:
                    parent.rmdir()  # the run's folder, once its last trial's is gone
                except OSError:
                    break
        self.kept, self.kept_epoch = None, None


class TuneBackend:
    """An in-process trial (train/inprocess.py), reporting through Tune's function session. A report whose
    checkpoint copy fails leaves Tune's session counters moved; they are put back (the Ray 2.60 fact is at
    raycompat.save_tune_report_counters) before the epoch is reported again without its checkpoint."""

    def __init__(self) -> None:
        from ray import tune

        storage = tune.get_context().get_storage()
        self._fs = storage.storage_filesystem
        self.where, self._marker = storage_where(storage)
        self.name = f"{storage.experiment_dir_name}/{storage.trial_dir_name}"

    def probe(self) -> Optional[str]:
        return probe_storage(self._fs, self._marker)

    def report_with_checkpoint(self, metrics: dict, ckpt_dir: str) -> None:
        from ray import tune

        restore_counters = raycompat.save_tune_report_counters()
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
        except Exception as e:
            restore_counters()
            raise StorageFailure(one_line(e)) from e

    def report_metrics(self, metrics: dict) -> None:
        from ray import tune

        tune.report(metrics)


class TrainBackend:
    """Rank 0 of a Ray Train (V2) worker group (train/ray_worker.py); the other ranks report metrics only.

    Ray 2.60 fact (ray/train/v2/_internal/execution/context.py `TrainContext.report`, SYNC upload): report() takes a
    report number (`report_call_index += 1`) and agrees on the folder name with the other ranks before it copies the
    checkpoint (`_upload_checkpoint`, 3 tries on AWS errors). If the copy raises, that number is never passed on:
    `_wait_then_report` lets report N go only once `current_report_index == N - 1`, so this worker's NEXT report
    waits forever. The copy must therefore not fail inside report(): it is made first, into the folder report()
    would use (`StorageContext.persist_current_checkpoint`, the call report() itself makes), and the checkpoint is
    then handed over as already persisted (`checkpoint_upload_mode=NO_UPLOAD`, which only checks that it lies in the
    run's folder on the run's filesystem). A copy that fails is followed by a report without a checkpoint, the
    report every other rank makes each epoch; a partial copy stays in a folder no report names."""

    def __init__(self) -> None:
        import ray.train

        self._storage = ray.train.get_context().get_storage()
        self.where, self._marker = storage_where(self._storage)
        self.name = self._storage.experiment_dir_name

    def probe(self) -> Optional[str]:
        return probe_storage(self._storage.storage_filesystem, self._marker)

    def report_with_checkpoint(self, metrics: dict, ckpt_dir: str) -> None:
        import ray.train
        from ray.train import Checkpoint, CheckpointUploadMode

        name = self._storage.make_default_checkpoint_dir_name()
        try:
            persisted = self._storage.persist_current_checkpoint(Checkpoint.from_directory(ckpt_dir), name)
        except Exception as e:
            raise StorageFailure(one_line(e)) from e
        ray.train.report(metrics, checkpoint=persisted, checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    def report_metrics(self, metrics: dict) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=None)


# ---- the outcome of a Train run whose last checkpoint storage did not take
# Ray 2.60 fact (ray/train/v2/_internal/execution/controller/controller.py `_build_result`): a Train run's Result
# carries the metrics of its latest *checkpoint* only, so a run whose last checkpoint was not persisted would end
# with an older epoch's metrics (or none, and count as failed). Rank 0 leaves its last report and history in a
# small named actor; the process that called fit() (train/trial.py `fit_outcome`) takes it and ends the actor.
# Detached, because the worker that creates it exits when the run ends; it exists only after such an outage.
OUTCOME_ACTOR_PREFIX = "largebatch-outcome-"
OUTCOME_NAMESPACE = "largebatch"  # named: a detached actor in a job's anonymous namespace draws a raylet warning


class _OutcomeBox:
    def __init__(self, payload: dict):
        self.payload = payload

    def get(self) -> dict:
        return self.payload


def leave_outcome(run_name: str, payload: dict) -> None:
    import ray

    name = OUTCOME_ACTOR_PREFIX + run_name
    try:
        ray.kill(ray.get_actor(name, namespace=OUTCOME_NAMESPACE))  # a stale one (an earlier run of that name)
    except ValueError:
        pass
    box = ray.remote(_OutcomeBox).options(name=name, namespace=OUTCOME_NAMESPACE, lifetime="detached",
                                          num_cpus=0).remote(payload)
    # Ray types an actor class's methods as plain callables, without .remote
    ray.get(box.get.remote())  # type: ignore[attr-defined]  # alive and holding it before this worker goes


def take_outcome(run_name: Optional[str]) -> Optional[dict]:
    """The outcome rank 0 left for this Train run, or None (the usual case: its last checkpoint was persisted)."""
    import ray

    if not run_name:
        return None
    try:
        box = ray.get_actor(OUTCOME_ACTOR_PREFIX + run_name, namespace=OUTCOME_NAMESPACE)
    except ValueError:
        return None
    try:
        # the handle is untyped, so mypy picks ray.get's first overload (a list of refs gives a list)
        return cast(dict, ray.get(box.get.remote(), timeout=60))
    finally:
        ray.kill(box)
