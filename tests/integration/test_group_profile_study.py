"""Issue #26 item 3 on a real local Ray: a study with 2 workers per trial is profiled on one worker group of 2 Ray
actors (DDP over gloo, tune/group.py) before the search, and its report.json projects every recipe's time to target
from that profile, not from the wall-clock measured while trials shared the machine."""
from __future__ import annotations

import json

import pytest
import yaml

from largebatch.config import load_study

from tests.integration.test_throughput_study import STUDY

GROUP_STUDY = {**STUDY, "name": "it-throughput-group",
               "search": {"data.global_batch_size": {"grid": [128]}, "scaling.rule": {"grid": ["sqrt"]}},
               "tuner": {**STUDY["tuner"], "workers_per_trial": 2}}


@pytest.mark.slow  # a 2-worker profile and 2 two-worker trials: minutes on the 2-core machine
def test_a_two_worker_studys_report_projects_from_its_group_profile(local_ray, tmp_path):
    from largebatch.tune.driver import run_study
    from largebatch.tune.throughput import CACHE_DIR

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(GROUP_STUDY))
    run_study(load_study(path), source=str(path), study_text=path.read_text(), run_root=str(tmp_path / "runs"),
              live=False)
    report = json.loads(next((tmp_path / "runs").rglob("report/report.json")).read_text())

    prof = report["throughput"]
    assert prof["status"] == "measured" and prof["setup"]["workers"] == 2
    entries = {e["global_batch_size"]: e for e in prof["entries"]}
    assert sorted(entries) == [16, 128]
    for b, e in entries.items():
        assert e["workers"] == 2 and e["per_worker_batch"] == b // 2  # each rank's share of the global batch
        assert e["step_s"] > 0 and e["steps_timed"] >= 5 and e["warmup_steps"] >= 2
    assert len(list((tmp_path / "runs" / CACHE_DIR).glob("*.json"))) == 2

    assert report["speed_basis"] == "projected"  # not the shared wall-clock
    assert not any("measured wall-clock" in w for w in report.get("warnings") or [])
    base = report["baseline"]
    assert base["projected_s"] == pytest.approx(base["steps"] * entries[16]["step_s"], rel=0.01)
    for c in report["configs"]:
        assert c["projected_s"] == pytest.approx(c["steps"] * entries[c["global_batch_size"]]["step_s"], rel=0.01)
        assert c["time_s"] == c["projected_s"] and c["wall_s_mean"] is not None
        assert c["speedup"] == pytest.approx(base["projected_s"] / c["projected_s"])
