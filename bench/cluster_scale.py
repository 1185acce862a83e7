"""Many trials on a simulated cluster (issue #27): the driver's overhead per trial at 10, 50 and 100 trials.

The setting is tests/e2e/test_cluster_scale.py's, built by the same helpers (tests/e2e/conftest.py
`start_sim_cluster`, `start_mlflow_server`, `scale_study`; tests/e2e/pgserver.py): four Ray nodes on loopback
(`ray start` each, 4 fake CPUs and a custom resource standing for accelerators), an MLflow server on a real
PostgreSQL with artifacts on S3 (moto_server), trial storage on S3. Each study is `largebatch tune --address` (the
driver on the head's machine, as a user runs it) with 1-worker trials of 2 epochs on 256 digits examples, 8 at a
time, the baseline + n-1 learning rates, `--no-check`; the cluster and servers are shared by the three studies.

Figures, per study (n = 10, 50, 100 trials), from the study's own report.json (`study_s`: the search's wall-clock,
`trial_s`: the sum of the trials' fit_s, what each trial took as its user waits for it, start-up included):
- driver overhead per trial = (study_s x concurrent slots - trial_s) / n: slot-seconds no trial used. The goal is a
  RATIO taken in the same run: overhead at 100 trials / overhead at 10 (<= 1.2), i.e. it does not grow per trial.
- study wall-clock per trial = study_s / n at 8 concurrent trials (< 0.5 s): seconds, on this shared 2-core
  machine (the load average is recorded).
- MLflow requests per trial-epoch: the MLflow server's access log (uvicorn, one line per request), counted from
  the study command's start to its end, / (n x epochs).
- driver memory: the peak RSS of the `largebatch tune` process (VmHWM, polled from /proc while it runs).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from largebatch.vocab import Status

SIZES = (10, 50, 100)
QUICK_SIZES = (5, 10)
EPOCHS, CONCURRENT, NODES = 2, 8, 4
REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) /\S+ HTTP/')


def _helpers():
    """tests/e2e's server and cluster helpers (conftest.py, pgserver.py), importable as plain modules."""
    for p in (common.REPO_ROOT / "tests", common.REPO_ROOT / "tests" / "e2e"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    import conftest as e2e
    import pgserver

    return e2e, pgserver


def _start_s3(e2e, root: Path):
    """moto_server on a free port with the test buckets (as tests/e2e/conftest.py's s3_server fixture)."""
    from largebatch.raylib import free_port
    from netwait import wait_http

    port = free_port()
    log = root / "moto.log"
    proc = subprocess.Popen([str(e2e.VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **e2e.DUMMY_AWS}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url, 60, proc, log)
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=e2e.DUMMY_AWS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=e2e.DUMMY_AWS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    for bucket in ("lb-runs", "lb-mlflow"):
        s3.create_bucket(Bucket=bucket)
    return proc, url


def _requests(log: Path) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if REQUEST.search(line))


def _peak_rss_mb(pid: int, stop: threading.Event, out: dict) -> None:
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out["peak_rss_mb"] = max(out.get("peak_rss_mb", 0.0), int(line.split()[1]) / 1024)
        except OSError:
            return
        stop.wait(0.5)


def _study(e2e, root: Path, env: dict, address: str, mlflow, n: int) -> dict[str, Any]:
    import yaml

    name = f"bench-scale-{n}"
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(e2e.scale_study(name, n, EPOCHS, CONCURRENT)))
    cmd = [str(e2e.VENV_BIN / "largebatch"), "tune", str(path), "--address", address, "--storage",
           f"s3://lb-runs/{name}", "--mlflow", mlflow.url, "--no-check"]
    requests_before = _requests(mlflow.log)
    log = root / f"{name}.log"
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log.open("w"), stderr=subprocess.STDOUT)
    stop, mem = threading.Event(), {}
    watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, stop, mem), daemon=True)
    watcher.start()
    try:
        rc = proc.wait(timeout=3600)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    command_s = time.time() - t0
    watcher.join(5)
    time.sleep(1.0)  # the server's last access lines
    requests = _requests(mlflow.log) - requests_before
    if rc != 0:
        raise RuntimeError(f"{name}: largebatch tune exited {rc}: {log.read_text()[-2000:]}")
    [report_file] = list(root.glob(f"runs/{name}-*/report/report.json"))
    report = json.loads(report_file.read_text())
    s = report["study"]
    assert report["counts"][Status.COMPLETED] == n, report["counts"]
    slots = int(s.get("slots") or CONCURRENT)
    return {"trials": n, "epochs": EPOCHS, "slots": slots, "study_s": s["study_s"], "trial_s": s["trial_s"],
            "training_s": s.get("training_s"), "startup_s": s.get("startup_s"), "command_s": command_s,
            "overhead_per_trial_s": (s["study_s"] * slots - s["trial_s"]) / n,
            "wall_per_trial_s": s["study_s"] / n, "mean_trial_s": s["trial_s"] / n,
            "mlflow_requests": requests, "requests_per_trial_epoch": requests / (n * EPOCHS),
            "driver_peak_rss_mb": mem.get("peak_rss_mb"), "load_avg_1m_end": os.getloadavg()[0]}


def run(quick: bool = False) -> dict[str, Any]:
    from largebatch.raylib import stop_process

    e2e, pgserver = _helpers()
    sizes = QUICK_SIZES if quick else SIZES
    root = Path(tempfile.mkdtemp(prefix="lbcs-", dir="/tmp"))  # short: Ray's AF_UNIX paths
    s3_proc, s3_url = _start_s3(e2e, root)
    rows: list[dict[str, Any]] = []
    t_up = time.time()
    try:
        with pgserver.postgres_server(root) as uri:
            mlflow = e2e.start_mlflow_server(root, s3_url, e2e.sqlalchemy_postgres(uri), tag="mlflow")
            try:
                (root / "cluster").mkdir()
                cluster = e2e.start_sim_cluster(root / "cluster", {**e2e.DUMMY_AWS, "AWS_ENDPOINT_URL": s3_url},
                                                n_nodes=NODES)
                up_s = time.time() - t_up
                try:
                    env = {**cluster.env, "LARGEBATCH_CACHE": str(root / "cache")}
                    for n in sizes:
                        rows.append(_study(e2e, root, env, cluster.address, mlflow, n))
                        print(f"    {n} trials: study {rows[-1]['study_s']:.1f} s, overhead/trial "
                              f"{rows[-1]['overhead_per_trial_s']:.2f} s, {rows[-1]['requests_per_trial_epoch']:.1f} "
                              f"MLflow requests/trial-epoch", flush=True)
                finally:
                    cluster.stop()
            finally:
                stop_process(mlflow.proc)
    finally:
        stop_process(s3_proc)
        subprocess.run(["rm", "-rf", str(root)], check=False)

    first, last = rows[0], rows[-1]
    growth = common.ratio(last["overhead_per_trial_s"], first["overhead_per_trial_s"])
    summary = [
        common.figure(f"driver overhead per trial at {last['trials']} trials / at {first['trials']} trials "
                      f"(study_s x slots - sum of trial time, per trial)", growth, goal="<= 1.2", met=growth <= 1.2),
        common.figure(f"study wall-clock per trial, {last['trials']} trials, {CONCURRENT} at a time",
                      last["wall_per_trial_s"], unit=" s", goal="< 0.5 s", met=last["wall_per_trial_s"] < 0.5),
    ]
    for r in rows:
        summary.append(common.figure(f"driver overhead per trial, {r['trials']} trials", r["overhead_per_trial_s"],
                                     unit=" s"))
        summary.append(common.figure(f"MLflow requests per trial-epoch, {r['trials']} trials",
                                     r["requests_per_trial_epoch"]))
        summary.append(common.figure(f"driver peak RSS, {r['trials']} trials", r["driver_peak_rss_mb"], unit=" MB"))
    return {"settings": {"nodes": NODES, "cpus_per_node": 4, "concurrent": CONCURRENT, "epochs": EPOCHS,
                         "sizes": list(sizes), "trial": "digits, 256 examples, MLP 16, B=64, 1 worker in-process",
                         "mlflow": "server on PostgreSQL, artifacts on S3 (moto_server)", "storage": "S3",
                         "cluster_and_servers_up_s": up_s},
            "rows": rows, "summary": summary}


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.cluster_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from bench.run_all import run_one

    payload = run_one("cluster_scale", quick=args.quick,
                      results_dir=common.RESULTS_DIR / "quick" if args.quick else common.RESULTS_DIR)
    return 1 if "error" in payload else 0


if __name__ == "__main__":
    sys.exit(main())
