"""The watch on a Ray cluster's head (largebatch/raywatch.py): what it sees of a GCS port, what it prints, and that
it never interrupts a main thread that is outside Ray's code."""
from __future__ import annotations

import socket
import time

from largebatch.raywatch import ClusterLost, ClusterWatch, on_cluster_lost, resume_hint_from_argv, _LOST_HANDLERS


def test_answers_follows_the_port():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    watch = ClusterWatch(f"127.0.0.1:{port}", grace_s=0.1, period_s=0.05)
    assert watch.answers()
    srv.close()
    assert not watch.answers()


def test_a_lost_port_does_not_interrupt_code_outside_ray():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nothing listens: the head is "lost" from the start
    watch = ClusterWatch(f"127.0.0.1:{port}", grace_s=0.05, period_s=0.05).start()
    try:
        time.sleep(0.5)  # this test's own frames are not Ray's: nothing is raised here
        assert watch.fired_at is None
    finally:
        watch.stop()


def test_the_message_names_the_cluster_and_the_wait():
    exc = type("ClusterLost", (ClusterLost,), {"where": "the Ray cluster at 10.0.0.1:6379", "after_s": 21.4})()
    assert str(exc) == "the Ray cluster at 10.0.0.1:6379 stopped answering for 21 s: its head node (the GCS) is gone"
    assert isinstance(exc, BaseException) and not isinstance(exc, Exception)


def test_the_resume_hint_is_the_tune_command_with_resume_and_no_password():
    hint = resume_hint_from_argv(["tune", "s.yaml", "--mlflow", "postgresql://u:pw@db/m", "--extend"])
    assert hint == "largebatch tune s.yaml --mlflow 'postgresql://u:***@db/m' --resume"  # shell-quoted
    assert resume_hint_from_argv(["tune", "s.yaml", "--resume"]).count("--resume") == 1
    assert resume_hint_from_argv(["report", "--experiment", "x"]) is None


def test_handlers_register_and_unregister():
    undo = on_cluster_lost(lambda e: "closed")
    assert len(_LOST_HANDLERS) == 1
    undo()
    undo()  # twice is harmless
    assert _LOST_HANDLERS == []
