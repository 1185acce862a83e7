"""The watch on a Ray cluster's head under a running driver (started by raylib.init_ray, stopped by shutdown_ray).

A cluster whose head goes away (the machine lost, its GCS killed) under a connected driver: Ray's own client waits
RAY_gcs_rpc_server_reconnect_timeout_s (60 s) and then ends the process from C++ ("The program will terminate"), with
no Python exception, so the study could not close its MLflow runs or say how to resume. `init_ray` therefore starts a
watch (`ClusterWatch`): once a second it opens a TCP connection to the GCS; when that fails for half of Ray's wait
(at most 20 s) while the main thread is inside Ray's code (Tune's loop, a ray.get), it raises `ClusterLost` in the
main thread, which the caller handles like any other failure of Ray under it (tune/driver.py `_on_ray`, with
tune/abort.py `abort_study`: the runs closed, the one-paragraph resume hint, exit 1; the process then exits at once,
not after Ray's own wait). A main thread blocked in a call to the lost GCS (Tune freeing a placement group) cannot
take it: after `handoff_s` the watch's thread stops the process itself, with the `on_cluster_lost` handlers' clean-up
and the same paragraph (`largebatch tune ... --resume`, from the process's own command line), exit 1. `shutdown_ray`
stops the watch.
"""
from __future__ import annotations

import atexit
import os
import socket
import sys
import time
from typing import Any, Optional


class ClusterLost(BaseException):
    """The Ray cluster's head (its GCS) stopped answering under a running driver (`ClusterWatch`). A BaseException,
    as KeyboardInterrupt is: Tune's loop catches Exception in places, and this must reach the caller."""

    where = "the Ray cluster"
    after_s = 0.0

    def __init__(self, *args: object):
        # raised by class (PyThreadState_SetAsyncExc): the message comes from the class attributes
        super().__init__(*args or (f"{self.where} stopped answering for {self.after_s:.0f} s: its head node (the GCS) "
                                   f"is gone",))


def gcs_reconnect_s() -> float:
    """How long Ray's client waits for a lost GCS before it ends the process
    (RAY_gcs_rpc_server_reconnect_timeout_s)."""
    try:
        return max(1.0, float(os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s", "60")))
    except ValueError:
        return 60.0


class ClusterWatch:
    """A daemon thread that raises ClusterLost in the main thread once the GCS at `gcs_address` has refused TCP
    connections for `grace_s` (module docstring). Raised only while the main thread runs Ray's code, so a study
    that has finished its trials (building its report from MLflow) is never interrupted."""

    def __init__(self, gcs_address: str, grace_s: Optional[float] = None, period_s: float = 1.0,
                 shown: Optional[str] = None):
        import threading

        host, _, port = gcs_address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.shown = shown or f"{self.host}:{self.port}"  # the address as the user gave it, in the message
        self.grace_s = grace_s if grace_s is not None else min(20.0, gcs_reconnect_s() / 2)
        self.period_s = period_s
        # how long the main thread gets to take ClusterLost before this thread stops the study itself; both waits
        # end well before Ray's own (gcs_reconnect_s), after which Ray ends the process
        self.handoff_s = min(5.0, gcs_reconnect_s() / 4)
        self.main_ident = threading.main_thread().ident
        self.stopped = threading.Event()
        self.fired_at: Optional[float] = None
        self.thread = threading.Thread(target=self._run, name="largebatch-cluster-watch", daemon=True)

    def start(self) -> "ClusterWatch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=min(2.0, self.period_s * 2)):
                return True
        except OSError:
            return False

    def _in_ray(self) -> bool:
        frame = sys._current_frames().get(self.main_ident) if self.main_ident is not None else None
        while frame is not None:
            if f"{os.sep}ray{os.sep}" in frame.f_code.co_filename:
                return True
            frame = frame.f_back
        return False

    def _run(self) -> None:
        down_since: Optional[float] = None
        while not self.stopped.wait(self.period_s):
            if self.answers():
                down_since = None
                continue
            down_since = down_since or time.time()
            if time.time() - down_since < self.grace_s or not self._in_ray():
                continue
            exc_type = type("ClusterLost", (ClusterLost,), {"where": f"the Ray cluster at {self.shown}",
                                                            "after_s": time.time() - down_since})
            if self.fired_at is None:
                self.fired_at = time.time()
                # nothing to shut down: Ray's own exit handler would wait out its reconnect timeout, then end
                # the process from C++; this one (registered last, so run first) ends it once the caller is done
                atexit.register(_exit_after_cluster_lost)
            elif time.time() - self.fired_at >= self.handoff_s:
                # the main thread is blocked in a call to the lost GCS (Tune freeing a placement group, ...): it
                # cannot take the exception before Ray ends the process, so the study is stopped from here
                _take_over(exc_type())
                return
            # (again each period while the main thread is still in Ray's code: a handler there may swallow it)
            _raise_in_thread(self.main_ident, exc_type)


# handler(ClusterLost) -> the message to print, or None: run by the watch's thread when it stops the study itself
# (the caller's clean-up that the main thread, blocked in Ray, cannot run: closing the study's MLflow runs)
_LOST_HANDLERS: list = []


def on_cluster_lost(handler) -> Any:
    """Register `handler(exc) -> Optional[str]` for a lost cluster (see ClusterWatch); returns its unregister."""
    _LOST_HANDLERS.append(handler)
    return lambda: _LOST_HANDLERS.remove(handler) if handler in _LOST_HANDLERS else None


def resume_hint_from_argv(argv: Optional[list[str]] = None) -> Optional[str]:
    """`largebatch tune ... --resume` for this process's own `largebatch tune` command line (URIs redacted)."""
    import shlex

    from largebatch.redact import redact_uri

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "tune":
        return None
    args = [a for a in args if a != "--extend"]
    return shlex.join(["largebatch", *(redact_uri(a) for a in args), *([] if "--resume" in args else ["--resume"])])


def _take_over(exc: ClusterLost) -> None:
    """Stop the process from the watch's thread: the handlers' clean-up, one paragraph on stderr, exit 1."""
    from largebatch.redact import redact_text

    message = None
    for handler in list(_LOST_HANDLERS):
        try:
            message = handler(exc) or message
        except BaseException:  # the clean-up is best effort: the process must still end with its message
            pass
    if message is None:
        hint = resume_hint_from_argv()
        message = (f"largebatch: the study stopped: {exc}. Its finished trials are safe in MLflow (the runs of the "
                   f"trials that were running stay open until the study is continued); unfinished trials continue "
                   f"from their last checkpoint once a head is back. Continue the study with:\n  {hint}" if hint else
                   f"largebatch: stopped: {exc}. Run the command again once the cluster is back.")
    try:
        print(redact_text(message), file=sys.stderr, flush=True)
    finally:
        _exit_after_cluster_lost()


def _exit_after_cluster_lost() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(1)


def _raise_in_thread(ident: Optional[int], exc_type: type) -> None:
    import ctypes

    if ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


_WATCH: Optional[ClusterWatch] = None


def _watch_cluster(address: Optional[str] = None) -> None:
    """Start the watch on the GCS this process is connected to (a no-op where its address is unknown); `address`:
    the one ray.init was given, shown in the message."""
    global _WATCH
    import ray

    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:
        return
    if _WATCH is not None:
        _WATCH.stop()
    shown = address if address and ":" in address and "://" not in address else None
    _WATCH = ClusterWatch(gcs, shown=shown).start() if gcs and ":" in gcs else None


def stop_watch() -> None:
    global _WATCH
    if _WATCH is not None:
        _WATCH.stop()
        _WATCH = None
