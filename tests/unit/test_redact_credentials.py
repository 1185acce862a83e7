"""Credentials in a study's values (issue #28 item 6): the mask holds when a password has a quote in it, and a
searched value that holds a credential is a reference from load on (what Tune writes and names after a trial), while
every check and trial gets the real string. The whole path on a real study: tests/integration/test_secret_values.py."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from largebatch.redact import hide_credentials, redact_text, reveal_credentials
from largebatch.tasks import Metric, Task, TaskData

SEEN: list[str] = []  # the store URLs the task factory below was called with


def store_task(store_url: str) -> Task:
    """A user task that takes a URL with a password (and records what it got)."""
    SEEN.append(store_url)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    return Task(data=lambda cfg: TaskData(train=(x, x.sum(1, keepdim=True)), eval=(x[:8], x[:8].sum(1, keepdim=True))),
                model=lambda cfg, d: nn.Linear(4, 1), loss=nn.functional.mse_loss,
                metrics=(Metric("mse", "min", lambda o, y: (o - y).square().flatten()),),
                train_size=lambda cfg: 64, name="store")


@pytest.mark.parametrize("text, shown", [
    ("postgresql://lb:pa'ss@db/m", "postgresql://lb:***@db/m"),
    ('postgresql://lb:pa"ss@db/m', "postgresql://lb:***@db/m"),
    ("https://to'k\"en@h/x", "https://***@h/x"),
    (repr("mysql://u:it's\"q@h/d"), "'mysql://u:***@h/d'"),  # repr escapes the quote: the mask takes the escape too
    ("got 'postgresql://lb:p'w@db/m'", "got 'postgresql://lb:***@db/m'"),  # the closing quote stays
    (json.dumps({"u": "s3://b/p?secret_key=ab'c\"d", "v": 1}), '{"u": "s3://b/p?secret_key=***", "v": 1}'),
    (str({"u": "s3://b/p?token=x'y"}), "{'u': \"s3://b/p?token=***\"}"),
    ("postgresql://lb:***@db/m (secret 1)", "postgresql://lb:***@db/m (secret 1)"),  # a reference stays as it is
])
def test_a_quote_in_a_password_does_not_end_the_mask(text, shown):
    assert redact_text(text) == shown


def test_hide_and_reveal_round_trip_with_stable_numbers():
    a, b = "postgresql://lb:p'1@db/m", "s3://b/p?secret_key=k2"
    value = {"urls": [a, "plain", b, a], "n": 3, "nested": {"u": b}}
    table: dict[str, str] = {}
    hidden = hide_credentials(value, table)
    assert hidden == {"urls": ["postgresql://lb:***@db/m (secret 1)", "plain", "s3://b/p?secret_key=*** (secret 2)",
                               "postgresql://lb:***@db/m (secret 1)"], "n": 3,
                      "nested": {"u": "s3://b/p?secret_key=*** (secret 2)"}}
    assert "p'1" not in str(hidden) and "k2" not in str(hidden)
    assert reveal_credentials(hidden, table) == value
    assert reveal_credentials(hidden, {}) == hidden and hide_credentials(["x", 1.5], {}) == ["x", 1.5]


def _study(tmp_path, **extra):
    raw = {"name": "sec", "base": {"task": {"name": "test_redact_credentials:store_task",
                                            "kwargs": {"store_url": "postgresql://lb:base'pw@db/m"}},
                                   "data": {"global_batch_size": 16}, "budget": {"epochs": 1}},
           "search": {"task.kwargs.store_url": {"grid": ["postgresql://lb:one'pw@db/m", "https://two\"pw@h/x"]}},
           "tuner": {"metric": "val_mse", "searcher": "grid"}, "baseline": {"data.global_batch_size": 16}, **extra}
    path = tmp_path / "sec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_loaded_study_searches_references_and_checks_real_values(tmp_path):
    from largebatch.config import check_search_resolves, load_study

    path = _study(tmp_path)
    SEEN.clear()
    study = load_study(path, resolved=True)
    refs = study.search["task.kwargs.store_url"]["grid"]
    assert refs == ["postgresql://lb:***@db/m (secret 1)", "https://***@h/x (secret 2)"]
    assert "postgresql://lb:one'pw@db/m" in SEEN and 'https://two"pw@h/x' in SEEN  # the checks built the real ones
    assert study.credentials() == {refs[0]: "postgresql://lb:one'pw@db/m", refs[1]: 'https://two"pw@h/x'}
    assert load_study(path).search == study.search  # the same references in every process (--resume, --extend)
    SEEN.clear()
    check_search_resolves(study, 1, str(path))  # `validate` checks the grid after load: with the real values
    assert not any("***" in u for u in SEEN) and len(SEEN) >= 2


def test_validate_prints_references_not_passwords(tmp_path, capsys, monkeypatch):
    from largebatch.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(_study(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert not any(p in out + err for p in ("one'pw", "two\"pw", "base'pw", "pw@")), out
    assert "postgresql://lb:***@db/m (secret 1)" in out


def test_extend_matches_finished_runs_by_the_real_values(tmp_path):
    from largebatch.config import baseline_trial, flatten, load_study
    from largebatch.tune.extend import _as_logged, study_trials

    study = load_study(_study(tmp_path))
    base = study.base.model_dump(mode="json")
    items = study_trials(study, base, baseline_trial(study).model_dump(mode="json"), "sec.yaml")
    searched = [i for i in items if i["arm"] == "search"]
    # the Tune configs an extension hands out hold references; what it compares is what a run logged
    assert {i["overrides"]["task.kwargs.store_url"] for i in searched} == set(study.credentials())
    real = dict(base, task={"name": base["task"]["name"], "kwargs": {"store_url": "postgresql://lb:one'pw@db/m"}})
    assert _as_logged(flatten(real))["task.kwargs.store_url"] == searched[0]["_params"]["task.kwargs.store_url"]
