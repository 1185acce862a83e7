"""Stopping a child we started ends what it started too (largebatch/raylib.py stop_process): a `ray start --block`
node's agents have outlived it, reparented to init, when the node went first."""
from __future__ import annotations

import subprocess
import sys
import time

from largebatch.raylib import descendants, is_running, stop_process


def test_stop_process_ends_the_grandchildren_that_outlive_their_parent():
    # sh starts a sleep and waits; SIGTERM ends sh alone, and the sleep (reparented to init) would run on
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
    deadline = time.time() + 10
    while not descendants(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    (child,) = descendants(proc.pid)
    assert is_running(child)
    t0 = time.time()
    stop_process(proc, timeout_s=5, tree_wait_s=0.5)
    assert proc.returncode is not None
    deadline = time.time() + 5
    while is_running(child) and time.time() < deadline:  # SIGKILL is delivered asynchronously
        time.sleep(0.05)
    assert not is_running(child), "the orphaned grandchild outlived stop_process"
    assert time.time() - t0 < 5


def test_stop_process_leaves_unrelated_processes_alone():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
    try:
        time.sleep(0.3)
        stop_process(proc, timeout_s=5, tree_wait_s=0.3)
        assert other.poll() is None and is_running(other.pid)
    finally:
        other.kill()
        other.wait()
