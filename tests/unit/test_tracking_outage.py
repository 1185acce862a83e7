"""An MLflow server that goes away mid-study (docs/design.md §10): calls are retried for a bounded time, epochs wait
in the EpochLogger and go out in order and exactly once, nothing raises into training, and what could not be logged
is named. The outage is simulated on a SQLite store by failing the client's calls the way a refused connection does
(tests/integration/test_outages.py stops a real `mlflow server`)."""
from __future__ import annotations

import http.server
import os
import threading

import pytest

from largebatch import tracking
from largebatch.errors import BadInput
from largebatch.tracking import EpochLogger, Tracker, preflight_tracking, unreachable, with_retry

from fake_clock import Clock


class Down(ConnectionError):
    """What requests raises under MLflow's client when nothing listens."""


def test_unreachable_tells_an_outage_from_a_refusal():
    from mlflow.exceptions import MlflowException, RestException

    assert unreachable(Down("refused"))
    assert unreachable(MlflowException("API request to http://h/api failed with exception Max retries exceeded"))
    assert unreachable(MlflowException("busy", error_code="TEMPORARILY_UNAVAILABLE"))
    assert not unreachable(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}))
    assert not unreachable(ValueError("x"))


def test_with_retry_backs_off_within_its_budget_then_raises():
    clock, calls = Clock(), []

    def flaky():
        calls.append(clock.t)
        if len(calls) < 4:
            raise Down("refused")
        return "ok"

    assert with_retry(flaky, 60, sleep=clock.sleep, clock=clock) == "ok"
    assert clock.sleeps == [0.5, 1.0, 2.0]
    clock2 = Clock()
    with pytest.raises(Down):
        with_retry(lambda: (_ for _ in ()).throw(Down("refused")), 20, sleep=clock2.sleep, clock=clock2)
    assert clock2.t <= 20 and clock2.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]
    clock3 = Clock()
    with pytest.raises(ValueError):  # not an outage: no retry
        with_retry(lambda: (_ for _ in ()).throw(ValueError("bad")), 60, sleep=clock3.sleep, clock=clock3)
    assert clock3.sleeps == []


def test_client_calls_fail_fast_by_default(monkeypatch):
    for k in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own value wins
    tracking._client("sqlite:///:memory:")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_mlflow_prints_no_run_links_for_a_uri_with_credentials(monkeypatch):
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    tracking._client("http://127.0.0.1:5000")
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ  # its links stay for a plain URI
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")
    tracking._client("http://lb:pw@127.0.0.1:5000")
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, retry_s=0)
    exp = tracker.experiment_id("outage", (tmp_path / "art").as_uri())
    return uri, tracker, tracker.start_run(exp, "trial")


class Outage:
    """Wraps a client method: raises Down while `down`; `lost=True` writes first, then loses the answer."""

    def __init__(self, fn):
        self.fn, self.down, self.lost, self.calls = fn, False, False, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.lost:
            self.fn(*a, **kw)
            raise Down("answer lost")
        if self.down:
            raise Down("refused")
        return self.fn(*a, **kw)


def _epoch(e: int) -> dict:
    return {"epoch": e, "val_loss": 1.0 / (e + 1), "val_acc": 0.1 * e, "lr": 0.1, "is_final": False}


def _steps(tracker, run_id, key="val_loss"):
    return [m.step for m in sorted(tracker.client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]


def test_epochs_wait_during_an_outage_and_go_out_once_in_order(run, capsys):
    uri, tracker, run_id = run
    logger = EpochLogger(uri, run_id, retry_s=0)
    batch, hist = Outage(logger.client.log_batch), Outage(logger.client.get_metric_history)
    logger.client.log_batch, logger.client.get_metric_history = batch, hist
    assert logger.log_epoch(_epoch(0))
    batch.down = hist.down = True
    assert not logger.log_epoch(_epoch(1)) and not logger.log_epoch(_epoch(2))  # no exception into the loop
    assert sorted(logger.pending) == [1, 2]
    batch.down = hist.down = False
    assert logger.log_epoch(_epoch(3)) and not logger.pending
    assert _steps(tracker, run_id) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert err.count("wait to be logged") == 1 and "logging to run" in err  # one line per outage, not per epoch


def test_an_answer_lost_after_the_write_does_not_log_the_epoch_twice(run):
    uri, tracker, run_id = run
    logger = EpochLogger(uri, run_id, retry_s=0)
    batch = Outage(logger.client.log_batch)
    logger.client.log_batch = batch
    logger.log_epoch(_epoch(0))
    batch.lost = True
    assert not logger.log_epoch(_epoch(1))  # written, but the worker could not know
    batch.lost = False
    assert logger.log_epoch(_epoch(2))
    assert _steps(tracker, run_id) == [0, 1, 2]


def test_close_waits_a_bounded_time_for_the_server(run, monkeypatch):
    uri, tracker, run_id = run
    logger = EpochLogger(uri, run_id, retry_s=5)
    batch = Outage(logger.client.log_batch)
    logger.client.log_batch = batch
    batch.down = True
    logger.log_epoch(_epoch(0))
    sleeps = []

    def sleep(s):  # the server comes back after two waits
        sleeps.append(s)
        batch.down = len(sleeps) < 2

    monkeypatch.setattr(tracking.time, "sleep", sleep)
    assert logger.close() and _steps(tracker, run_id) == [0]
    batch.down = True
    logger.log_epoch(_epoch(1))
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    logger.retry_s = 0
    assert not logger.close()  # gave up: no exception, the epoch is still named as waiting
    assert list(logger.pending) == [1]


def test_a_logger_started_during_an_outage_learns_the_logged_epochs_later(run, monkeypatch):
    uri, tracker, run_id = run
    first = EpochLogger(uri, run_id)
    first.log_epoch(_epoch(0))
    first.log_epoch(_epoch(1))
    from mlflow.tracking import MlflowClient

    real = MlflowClient.get_metric_history
    monkeypatch.setattr(MlflowClient, "get_metric_history", lambda *a, **k: (_ for _ in ()).throw(Down("refused")))
    restarted = EpochLogger(uri, run_id, retry_s=0)  # a restarted worker, MLflow down
    assert restarted.last_logged is None
    restarted.backfill([_epoch(0), _epoch(1), _epoch(2)])
    monkeypatch.setattr(MlflowClient, "get_metric_history", real)
    assert restarted.log_epoch(_epoch(3))
    assert _steps(tracker, run_id) == [0, 1, 2, 3]


def test_trial_calls_give_up_without_raising_and_say_what_was_not_logged(run, capsys):
    uri, tracker, run_id = run
    for name in ("log_batch", "set_tag", "set_terminated", "log_text"):
        setattr(tracker.client, name, Outage(getattr(tracker.client, name)))
        getattr(tracker.client, name).down = True
    pw = "s3cr3t-pw"
    assert not tracker.log_final(run_id, {"fit_s": 1.0}, "completed", history=[_epoch(0)])
    assert not tracker.set_note(run_id, "note")
    assert not tracker.end_run(run_id)
    assert not tracker.log_text(run_id, "x", "error.txt")
    assert len(tracker.unlogged) == 5 and any("final status" in u for u in tracker.unlogged)
    tracker.client.set_tag.down = False
    tracker.client.set_tag.fn = lambda *a, **k: (_ for _ in ()).throw(Down(f"http://u:{pw}@h refused"))
    tracker.set_note(run_id, "note")
    assert pw not in capsys.readouterr().err


def test_log_final_backfills_the_epochs_the_worker_could_not_log(run):
    uri, tracker, run_id = run
    logger = EpochLogger(uri, run_id)
    logger.log_epoch(_epoch(0))
    history = [_epoch(0), _epoch(1), _epoch(2)]
    assert tracker.log_final(run_id, {"fit_s": 3.0}, "completed", step=2, history=history)
    assert _steps(tracker, run_id) == [0, 1, 2]
    assert tracker.client.get_run(run_id).data.tags["status"] == "completed"


def test_start_run_makes_one_run_when_the_answer_is_lost(run):
    uri, tracker, parent = run
    exp = tracker.client.get_run(parent).info.experiment_id
    create = Outage(tracker.client.create_run)
    tracker.client.create_run = create
    create.lost = True
    calls = []

    def once_lost(*a, **k):
        calls.append(1)
        create.lost = len(calls) < 2
        return Outage.__call__(create, *a, **k)

    tracker.client.create_run = once_lost
    tracker.retry_s = 5
    child = tracker.start_run(exp, "B=32", parent_id=parent, tags={tracking.TRIAL_TAG: "t1"})
    children = tracker.client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in children] == [child]


class _Health(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *a):
        pass


def test_preflight_with_credentials_in_the_uri_reaches_the_server_and_never_shows_them():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        port = srv.server_address[1]
        preflight_tracking(f"http://lb:pa%40ss-w0rd@127.0.0.1:{port}")
        import base64

        assert _Health.seen[-1] == ("/health", "Basic " + base64.b64encode(b"lb:pa@ss-w0rd").decode())
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(BadInput) as e:
        preflight_tracking(f"http://lb:pa55w0rd-xyz@127.0.0.1:{port}")  # nothing listens now
    assert "pa55w0rd" not in str(e.value) and "lb:***@127.0.0.1" in str(e.value)


def test_a_server_gone_for_good_costs_one_wait_not_one_per_call(run, monkeypatch):
    uri, tracker, run_id = run
    tracker.retry_s = 30
    clock = Clock()
    monkeypatch.setattr(tracking.time, "sleep", clock.sleep)
    monkeypatch.setattr(tracking.time, "monotonic", clock)
    tracker.client.set_tag = Outage(tracker.client.set_tag)
    tracker.client.set_tag.down = True
    assert not tracker.set_note(run_id, "a")
    waited = clock.t
    assert 15 < waited <= 30
    assert not tracker.set_note(run_id, "b") and not tracker.set_note(run_id, "c")
    assert clock.t == waited  # tried once each
    tracker.client.set_tag.down = False
    assert tracker.set_note(run_id, "d") and not tracker.gave_up
