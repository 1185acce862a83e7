"""A real PostgreSQL server for the tests: Debian's `postgresql` (initdb + postgres), started in a temporary folder on
a free port on 127.0.0.1, stopped by PID.

    with postgres_server(base_dir) as uri:   # postgresql://lbuser:PASSWORD@127.0.0.1:PORT/mlflow
        ...

- initdb and postgres refuse to run as root: as root they run as `nobody` (setpriv), the cluster folder chowned to
  it; as any other user they run as that user.
- The database user has a random password (scram-sha-256 on TCP and on the socket), so the URI carries a credential
  as a deployed one does: whatever prints it must mask it.
- The unix socket lives in the cluster folder (not /var/run/postgresql); the cluster folder is made under base_dir,
  which gets o+x (traverse, no listing) when the unprivileged user could not reach into it. Keep base_dir short: an
  AF_UNIX socket path is capped at 107 bytes.
- Stopped by its PID with SIGINT (PostgreSQL's fast shutdown), SIGKILL if it does not go in time; the folder removed.
`make e2e-deps` installs Debian's postgresql where it is missing.
"""
from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

from largebatch.raylib import free_port

PG_USER = "lbuser"
PG_DB = "mlflow"
UNPRIVILEGED = "nobody"


def pg_bindir() -> Path:
    """The folder of initdb/pg_ctl/postgres: Debian's /usr/lib/postgresql/<newest>/bin, else `pg_config --bindir`."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        d = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        if (d / "initdb").exists():
            return d
    raise RuntimeError("no PostgreSQL server binaries (initdb, postgres): `make e2e-deps` installs Debian's "
                       "postgresql (needs root)")


def _as_user() -> list[str]:
    """The prefix that runs a command as the unprivileged user when we are root; nothing otherwise."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={UNPRIVILEGED}", "--regid=nogroup", "--clear-groups", "--"]


def _give_to_user(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam(UNPRIVILEGED)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _reachable_base(base_dir: Path) -> None:
    """As root, the unprivileged server must be able to traverse base_dir (a mkdtemp folder is 0700): add o+x."""
    if os.geteuid() != 0:
        return
    mode = base_dir.stat().st_mode
    if not mode & stat.S_IXOTH:
        os.chmod(base_dir, stat.S_IMODE(mode) | stat.S_IXOTH)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def postgres_server(base_dir, port: Optional[int] = None, timeout_s: float = 60.0) -> Iterator[str]:
    """A fresh PostgreSQL cluster in a new folder under base_dir, serving one database on 127.0.0.1: yields its
    `postgresql://USER:PASSWORD@127.0.0.1:PORT/DB` URI; stopped (by PID) and removed on exit."""
    bindir = pg_bindir()
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    _reachable_base(base_dir)
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
    os.chmod(root, 0o755)
    data, sock, log = root / "data", root / "sock", root / "postgres.log"
    for d in (data, sock):
        d.mkdir(mode=0o700)
        _give_to_user(d)
    password = secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    _give_to_user(pwfile)
    proc: Optional[subprocess.Popen] = None
    try:
        r = subprocess.run([*_as_user(), str(bindir / "initdb"), "-D", str(data), f"--username={PG_USER}",
                            f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                            "--no-sync"], capture_output=True, text=True, timeout=120, cwd=root)
        pwfile.unlink()
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}): {(r.stdout + r.stderr)[-3000:]}")
        port = port or free_port()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*_as_user(), str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}",
                 # a throwaway test cluster: no durability, little memory, room for many clients (trials, servers)
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "shared_buffers=32MB", "-c", "max_connections=300"],
                stdout=out, stderr=subprocess.STDOUT, cwd=root)
        env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited {proc.returncode}: {_tail(log)}")
            ready = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
                                    "-U", PG_USER, "-d", "postgres"], env=env, capture_output=True, timeout=30)
            if ready.returncode == 0:
                break
            if time.time() > deadline:
                raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{port} in {timeout_s} s: "
                                   f"{_tail(log)}")
            time.sleep(0.2)
        r = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
                           env=env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"createdb failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
        yield f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/{PG_DB}"
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGINT (fast shutdown: clients disconnected, a clean checkpoint) to the postmaster by PID; SIGKILL if it is
    still there after timeout_s (its backends then exit by themselves when they see the postmaster gone)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
