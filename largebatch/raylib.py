"""Connecting to Ray: a local head by default, `--address`/RAY_ADDRESS for a cluster. Only place ray.init runs.

The local default is a real head node started as our child (`ray start --head --block`, stopped by PID; never
`ray stop`), not an in-process `ray.init()`: its environment carries RAY_ADDRESS, so Ray Train's internal actors
(the PlacementGroupCleaner) find THIS cluster even when other Ray instances run on the machine. With a bare
`ray.init()` they fail with "multiple active Ray instances", placement groups leak and later trials time out.

Token auth (Ray >= 2.59) stays on for the local head, with a token of its own: a fresh random token in a private
file (folder 0700, file 0600) that head, driver and every Ray process they start find through RAY_AUTH_TOKEN_PATH.
Nothing in the user's ~/.ray is read or written, so a machine that never ran Ray works (with RAY_AUTH_MODE=token
forced and no token, `ray start` refuses to start) and a user's token for a real cluster is left alone. For a
remote cluster (`--address`) the environment decides, and a mismatch becomes one clear line.

The head is our child in its own right: it gets SIGTERM from the kernel when the process that started it dies
(PR_SET_PDEATHSIG), so a SIGKILLed CLI leaves no raylet or GCS behind.

The head is light: only what Tune and Train use. `ray start --head` would also start the dashboard's HTTP server
with its eight module processes, the Ray client server (port 10001) and the autoscaler monitor; none of them runs a
trial. `--include-dashboard=false` leaves one small dashboard process (usage stats only), `--no-monitor` drops the
monitor, and `ray start` has no flag for the client server, so a RAY_START_HOOK (`_no_client_server`, called by
`ray start` with its RayParams before any process starts) clears its port. The log monitor only feeds worker output
to the driver, so it runs only with --verbose. LARGEBATCH_RAY_DASHBOARD=1 brings the full head back (the dashboard
at the URL the study records, with its job and state APIs). The object store is LARGEBATCH_OBJECT_STORE_MB
(default 512; 0 is Ray's own default, 30% of memory): every Ray process maps all of it, so an address-space limit
(`ulimit -v`) too small for it is one line before Ray starts, not Ray's "mmap failed" stack trace.

A lost head under a running driver is watched for by largebatch/raywatch.py (`init_ray` starts the watch).
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from largebatch import interrupts, quiet, raycompat
from largebatch.errors import BadInput
from largebatch.rayauth import _check_auth, _check_reachable, _connect_error, _match_auth_mode  # noqa: F401
from largebatch.raywatch import _watch_cluster, stop_watch

# Each ray.train.report waits for the controller's poll (2 s by default); short epochs need a faster poll.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
             # under load (2 cores, several trials starting), worker groups took over Ray's 60 s default to start
             "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}


# Our own head stops at once: Ray 2.60's `ray start --block` drains its node on SIGTERM for up to 30 s (for Serve
# replicas on Kubernetes, ray/_private/node.py `_drain_node_before_shutdown`), and a node a Train or Tune run had
# used waited out the whole 30 s (+ 10 s for its agents) after the driver had disconnected: every `largebatch train`
# and `tune` on the local head ended 40 s after its report. Nothing runs on the head by then; a user's value wins.
HEAD_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def _env_defaults(defaults: dict[str, str]) -> dict[str, str]:
    """`defaults`, each overridden by the value this process's environment has for it."""
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def _train_env() -> dict[str, str]:
    return _env_defaults(TRAIN_ENV)


DASHBOARD_ENV = "LARGEBATCH_RAY_DASHBOARD"  # "1": the local head with Ray's dashboard, client server and monitor
OBJECT_STORE_ENV = "LARGEBATCH_OBJECT_STORE_MB"
DEFAULT_OBJECT_STORE_MB = 512  # trials pass little through the object store: checkpoints go to storage, not here
MIN_OBJECT_STORE_MB = 75  # Ray refuses less (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES)
# Address space a Ray process needs besides the object store mapping: the largest VmPeak measured in a 1-worker
# `largebatch train` was a Ray Train worker's, 3236 MiB with a 100 MiB store (the CLI driver 3218 MiB)
PROCESS_ADDRESS_SPACE_MB = 4096
MiB = 1024 * 1024


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def object_store_mb() -> int:
    """The local head's object store in MiB: LARGEBATCH_OBJECT_STORE_MB, else 512 or 30% of memory if less; 0 means
    Ray's own default (30% of memory)."""
    raw = os.environ.get(OBJECT_STORE_ENV, "").strip()
    if not raw:
        return max(MIN_OBJECT_STORE_MB, min(DEFAULT_OBJECT_STORE_MB, int(_memory_bytes() * 0.3 / MiB)))
    try:
        mb = int(raw)
    except ValueError:
        mb = -1
    if mb != 0 and mb < MIN_OBJECT_STORE_MB:
        raise BadInput(f"got {raw!r}; use a whole number of MiB, at least {MIN_OBJECT_STORE_MB} (e.g. "
                       f"{DEFAULT_OBJECT_STORE_MB}), or 0 for Ray's default (30% of memory)", field=OBJECT_STORE_ENV)
    return mb


def check_address_space(store_mb: int) -> None:
    """Every Ray process maps the whole object store: a `ulimit -v` below store + one process is one line here,
    instead of Ray's C++ "mmap failed" stack trace from deep inside the raylet or a worker."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return
    store = store_mb * MiB if store_mb else int(_memory_bytes() * 0.3)
    need = store + PROCESS_ADDRESS_SPACE_MB * MiB
    if soft < need:
        smaller = store_mb or DEFAULT_OBJECT_STORE_MB
        fit = (soft // MiB) - PROCESS_ADDRESS_SPACE_MB
        fix = (f"or set {OBJECT_STORE_ENV}={fit}" if fit >= MIN_OBJECT_STORE_MB and fit < smaller
               else f"(a smaller {OBJECT_STORE_ENV} does not fit either)" if fit < MIN_OBJECT_STORE_MB else "")
        raise BadInput(f"the address-space limit is {soft // 1024} KiB, but each Ray process maps the "
                       f"{store // MiB} MiB object store plus about {PROCESS_ADDRESS_SPACE_MB} MiB of its own; raise "
                       f"it with `ulimit -v {-(-need // 1024)}` (or `ulimit -v unlimited`) {fix}".strip(),
                       field="ulimit -v")


def _no_client_server(ray_params: Any, head: bool) -> None:
    """RAY_START_HOOK of the light local head (in the `ray start` process): no Ray client server."""
    raycompat.drop_client_server(ray_params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child between fork and exec: ask the kernel for SIGTERM when our parent dies (Linux only)."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return  # not Linux: the atexit/signal handlers are the only guard
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def descendants(root: int) -> set[int]:
    """Every live process below `root`, from /proc (empty where there is no /proc)."""
    parents: dict[int, Optional[int]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - out
        out |= frontier
    return out


def is_running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0, tree_wait_s: float = 10.0) -> None:
    """SIGTERM a child we started (a server, a `ray start --block` node), SIGKILL it if it does not go in time; then
    the processes it had started. A `ray start --block` node stops its own processes on SIGTERM, but a node's
    dashboard and runtime-env agents have outlived it (reparented to init) when it went before them: those are
    ours too, so they get `tree_wait_s` to go by themselves, then SIGKILL. Only the PIDs seen below it are touched."""
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.time() + tree_wait_s
    while (left := {p for p in tree if is_running(p)}) and time.time() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def write_private_token(folder: Path) -> Path:
    """A fresh random token in `folder`/auth_token, created 0600 (never readable by others, not even briefly)."""
    path = folder / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


class LocalHead:
    """A Ray head node on 127.0.0.1 as a child process; `stop()` terminates it by PID (--block stops its processes).

    It runs with token auth and its own token (see the module docstring); `auth_env()` is what a client of this
    head needs in its environment."""

    def __init__(self, num_cpus: Optional[int] = None, resources: Optional[dict[str, float]] = None,
                 extra_env: Optional[dict[str, str]] = None, *, full: Optional[bool] = None,
                 object_store_mb: Optional[int] = None, log_monitor: bool = True):
        """`full`: Ray's whole head (dashboard, client server, autoscaler monitor); default LARGEBATCH_RAY_DASHBOARD=1.
        `object_store_mb`: None is Ray's default (30% of memory). `log_monitor`: needed only to echo worker output
        to a driver (ray.init(log_to_driver=True))."""
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.full = os.environ.get(DASHBOARD_ENV) == "1" if full is None else full
        self.dashboard_url: Optional[str] = f"http://127.0.0.1:{self.dashboard_port}" if self.full else None
        self.num_cpus, self.resources, self.extra_env = num_cpus, resources, extra_env or {}
        self.object_store_mb, self.log_monitor = object_store_mb, log_monitor
        self.proc: Optional[subprocess.Popen] = None
        fd, log = tempfile.mkstemp(prefix=f"largebatch-ray-head-{self.port}-", suffix=".log")  # 0600, a fresh name
        os.close(fd)
        self.log = Path(log)
        self.secret_dir: Optional[Path] = None
        self.token_path: Optional[Path] = None

    def auth_env(self) -> dict[str, str]:
        assert self.token_path is not None, "start() creates the token"
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)  # the venv on PATH before `ray start`, or jobs miss `ray`
        # RAY_AUTH_TOKEN would win over our token file: a user's cluster token must not reach this head
        base = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        hook = {} if self.full else {"RAY_START_HOOK": f"{__name__}._no_client_server"}
        return {**base, **_train_env(), **_env_defaults(HEAD_ENV), **self.extra_env, "RAY_ADDRESS": self.address,
                **self.auth_env(), **hook, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}

    def start(self, timeout_s: float = 180.0) -> "LocalHead":  # 6.5 s quiet; minutes on a loaded 2-core box
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", f"--port={self.port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}",
               # each node's agent needs its own port: the default (52365) clashes with any other Ray on the machine
               f"--dashboard-agent-listen-port={free_port()}"]
        if not self.full:  # what Tune and Train use, no more (module docstring)
            cmd += ["--include-dashboard=false", "--no-monitor"]
        if not self.log_monitor:
            cmd.append("--include-log-monitor=false")
        if self.object_store_mb:
            cmd.append(f"--object-store-memory={self.object_store_mb * MiB}")
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        self.secret_dir = Path(tempfile.mkdtemp(prefix="lb-ray-auth-"))  # mode 0700
        self.token_path = write_private_token(self.secret_dir)
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.stop()  # removes the token folder
                raise RuntimeError(f"ray start --head exited with {self.proc.returncode}; see {self.log}")
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"ray start --head did not come up in {timeout_s:.0f} s; see {self.log}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s)
        if self.secret_dir is not None:
            shutil.rmtree(self.secret_dir, ignore_errors=True)
            self.secret_dir = None


_HEAD: Optional[LocalHead] = None
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_SAVED_AUTH_ENV: Optional[dict[str, Optional[str]]] = None


def _reload_auth_config() -> None:
    """Ray caches the auth mode and the token per process: make it read the environment again."""
    raycompat.reload_auth_config()


def _use_head_auth(head: LocalHead) -> None:
    """Point this process at our head's token (restored by shutdown_ray, so a later --address sees the user's)."""
    global _SAVED_AUTH_ENV
    _SAVED_AUTH_ENV = {k: os.environ.get(k) for k in _AUTH_VARS}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(head.auth_env())
    _reload_auth_config()


def _restore_auth_env() -> None:
    global _SAVED_AUTH_ENV
    if _SAVED_AUTH_ENV is None:
        return
    for k, v in _SAVED_AUTH_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _SAVED_AUTH_ENV = None
    _reload_auth_config()


def preflight_ray(address: Optional[str] = None) -> None:
    """What can be wrong with Ray, checked before anything is written: for a cluster (--address/RAY_ADDRESS) that it
    answers and takes our token; for the local head the object-store setting and the address-space limit."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
        _match_auth_mode()
        _check_auth(address)
    else:
        check_address_space(object_store_mb())


def init_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
             resources: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Start (a local head) or join Ray. Returns the cluster facts for the study record; 'started' says whether
    we own it (then shutdown_ray() stops it)."""
    global _HEAD
    import ray
    from ray.exceptions import RayError

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():  # the caller owns this Ray (tests share one instance); we must not shut it down
        return {**cluster_info(address), "started": False}
    env = _train_env()
    os.environ.update(env)
    started = False
    if not address:
        # the local head's start hook and auth reload use Ray's private API: on a Ray they do not fit, say so before
        # a head is started (the hook's own refusal would only be in the head's log)
        raycompat.require_supported_ray("the local head's RAY_START_HOOK and auth reload")
        store_mb = object_store_mb()
        check_address_space(store_mb)
        _HEAD = LocalHead(num_cpus=num_cpus, resources=resources, extra_env=quiet.local_head_env(),
                          object_store_mb=store_mb, log_monitor=quiet.is_verbose()).start()
        address, started = _HEAD.address, True
        _use_head_auth(_HEAD)
    else:
        _check_reachable(address)
        _match_auth_mode()
        _check_auth(address)
    try:
        # a short GCS timeout: an unreachable address is a clear error in seconds, not a 60 s retry loop
        os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", "10")
        # log_to_driver and the driver's log level follow --verbose (largebatch/quiet.py). No runtime_env here:
        # inside `ray job submit` it would REPLACE the job's (working_dir included), and our own local head
        # already carries TRAIN_ENV in its environment
        ray.init(address=address, **quiet.ray_init_kwargs())
        interrupts.reinstall()  # ray.init's SIGTERM handler would abort the driver without any clean-up
        _watch_cluster(address)
    except (ConnectionError, RuntimeError, RayError) as e:
        if started:
            shutdown_ray()
        raise _connect_error(e, address) from None
    info = cluster_info(address)
    if started:
        info["address"] = "local"
        assert _HEAD is not None  # started: the head is ours until shutdown_ray
        if _HEAD.dashboard_url:
            info["dashboard"] = _HEAD.dashboard_url
    return {**info, "started": started}


def cluster_info(address: Optional[str]) -> dict[str, Any]:
    import ray

    res = ray.cluster_resources()
    return {"address": address or "local", "local": not address, "cpus": int(res.get("CPU", 0)),
            "gpus": int(res.get("GPU", 0)), "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "resources": {k: v for k, v in res.items() if not k.startswith("node:") and "memory" not in k}}


def shutdown_ray() -> None:
    """Disconnect, and stop the local head if we started it (by PID)."""
    global _HEAD
    import ray

    stop_watch()
    if ray.is_initialized():
        ray.shutdown()
    if _HEAD is not None:
        _HEAD.stop()
        _HEAD = None
        _restore_auth_env()
