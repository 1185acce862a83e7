"""Issue #17 item 1: the isolated throughput profile (tune/throughput.py) and the report's projected speed
(report/speed.py): projection, basis fallback, the cache key, the measurement's summary, what is not profiled."""
from __future__ import annotations

import pytest

from largebatch.report import build_report, format_table, write_report
from largebatch.report.speed import choose_basis, projected, step_times
from largebatch.tune import throughput as tp

from tests.unit.test_report import trial


def profile(**step_ms) -> dict:
    """A profile as tune/throughput.py returns it: {B: ms per step}."""
    entries = [{"global_batch_size": int(b[1:]), "step_s": ms / 1000, "examples_per_s": int(b[1:]) / (ms / 1000)}
               for b, ms in step_ms.items()]
    return {"version": tp.VERSION, "status": "measured", "reason": None, "machine": {"hostname": "h"},
            "entries": entries}


def noisy_study() -> list[dict]:
    """Measured wall-clock that contradicts the step counts: B=1024 (580 steps) measured fast because it ran alone,
    B=4096 (140 steps) measured slow because it shared the CPUs (the issue's example)."""
    return [
        trial(16, "none", 0, 0, acc=0.898, wall=94.0, baseline=True, steps=37500),
        trial(1024, "linear", 2, 0, acc=0.896, wall=10.9, steps=580),
        trial(4096, "linear", 2, 0, acc=0.895, wall=19.1, steps=140),
    ]


PROFILE = profile(B16=0.5, B1024=12.0, B4096=46.0)


def test_projected_time_is_steps_times_the_profiled_step_time():
    r = build_report(noisy_study(), tolerance=0.5, profile=PROFILE)
    assert r["speed_basis"] == "projected"
    by_b = {c["global_batch_size"]: c for c in r["configs"]}
    assert by_b[1024]["projected_s"] == pytest.approx(580 * 0.012)
    assert by_b[4096]["projected_s"] == pytest.approx(140 * 0.046)
    assert by_b[4096]["time_s"] == by_b[4096]["projected_s"]
    assert by_b[4096]["wall_s_mean"] == 19.1  # the measured wall-clock stays beside it
    assert r["baseline"]["projected_s"] == pytest.approx(37500 * 0.0005)
    # speed-ups come from the profile, not from the measured wall-clock
    assert by_b[4096]["speedup"] == pytest.approx(37500 * 0.0005 / (140 * 0.046))
    assert by_b[1024]["speedup"] == pytest.approx(37500 * 0.0005 / (580 * 0.012))
    pb = {p["global_batch_size"]: p for p in r["per_batch"]}
    assert pb[4096]["projected_s"] == pytest.approx(6.44) and pb[4096]["wall_s"] == 19.1
    # the front and the recommendation follow projected time: B=4096 is now the fastest safe recipe
    assert r["recommended"]["global_batch_size"] == 4096
    assert [c["global_batch_size"] for c in r["pareto"]][0] == 4096
    assert r["throughput"] == PROFILE


def test_without_a_profile_the_report_uses_measured_wallclock_as_before():
    r = build_report(noisy_study(), tolerance=0.5)
    assert r["speed_basis"] == "measured" and r["throughput"] is None
    for c in r["configs"]:
        assert c["projected_s"] is None and c["time_s"] == c["wall_s_mean"]
    assert r["recommended"]["global_batch_size"] == 1024  # 10.9 s measured beats 19.1 s
    assert not any("profile" in w for w in r["warnings"])


def test_a_profile_that_misses_a_scored_batch_falls_back_for_every_recipe():
    r = build_report(noisy_study(), tolerance=0.5, profile=profile(B16=0.5, B1024=12.0))
    assert r["speed_basis"] == "measured"
    assert any("does not cover B=4096" in w for w in r["warnings"])
    assert all(c["time_s"] == c["wall_s_mean"] for c in r["configs"])
    assert {c["global_batch_size"]: c["projected_s"] for c in r["configs"]}[1024] == pytest.approx(6.96)


def test_batch_ramp_recipes_are_not_projected():
    recs = noisy_study()
    recs[2]["batch_ramp"] = True
    assert projected(4096, 140, step_times(PROFILE), batch_ramp=True) is None
    r = build_report(recs, tolerance=0.5, profile=PROFILE)
    assert r["speed_basis"] == "measured" and any("batch ramp" in w for w in r["warnings"])


def test_diverged_trials_do_not_need_a_projection():
    recs = noisy_study() + [trial(8192, "linear", 0, 0, status="diverged", wall=1.0, steps=3)]
    assert build_report(recs, tolerance=0.5, profile=PROFILE)["speed_basis"] == "projected"


def test_profile_off_is_a_warning_not_an_error():
    off = {"version": tp.VERSION, "status": "off", "reason": "2 workers per trial", "entries": []}
    r = build_report(noisy_study(), tolerance=0.5, profile=off)
    assert r["speed_basis"] == "measured"
    assert any("2 workers per trial" in w for w in r["warnings"])


def test_step_times_ignores_bad_entries():
    prof = {"entries": [{"global_batch_size": 8, "step_s": 0.0}, {"global_batch_size": 16, "step_s": float("nan")},
                        {"global_batch_size": 32}, {"global_batch_size": 64, "step_s": 0.25}]}
    assert step_times(prof) == {64: 0.25}
    assert step_times(None) == {}
    assert choose_basis([], {}, None, []) == "measured"


def test_table_names_the_projection_and_keeps_the_wallclock(tmp_path):
    r = build_report(noisy_study(), tolerance=0.5, profile=PROFILE)
    text = format_table(r)
    head = next(line for line in text.splitlines() if line.startswith("| batch"))  # the table's header
    assert "projected s*" in head and "wall-clock s" in head and "speed-up*" in head
    assert "projected training time = steps x the step time" in text
    assert "s projected (19.1 s wall-clock)" in text
    plain = format_table(build_report(noisy_study(), tolerance=0.5))
    assert "projected" not in next(line for line in plain.splitlines() if line.startswith("| batch"))
    names = {p.name for p in write_report(r, noisy_study(), tmp_path)}
    assert "throughput_vs_batch.png" in names
    assert "throughput_vs_batch.png" not in {p.name for p in write_report(build_report(noisy_study()), [],
                                                                          tmp_path / "plain")}


# ----------------------------------------------------------------------------- the cache key
BASE_TREE = {"task": {"name": "classification", "kwargs": {}}, "model": {"name": "mlp", "hidden_sizes": [64]},
             "data": {"dataset": "digits", "path": None, "loader_workers": 0, "per_worker_batch_cap": None,
                      "global_batch_size": 32, "train_subset": None},
             "precision": "fp32", "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 32, "momentum": 0.9},
             "instruments": {"grad_noise_scale": False}, "schedule": {"warmup_epochs": 0}, "seed": 0}
MACHINE = {"hostname": "node-a", "cpu_count": 2, "torch": "2.13.0"}


def _key(tree=BASE_TREE, batch=32, machine=MACHINE, cpus=1, workers=1, use_gpu=False):
    return tp.cache_key(tp.setup_of(tree, workers=workers, cpus=cpus, use_gpu=use_gpu), batch, machine)


def _with(tree, part, **kw):
    return {**tree, part: {**tree[part], **kw}}


def test_cache_key_is_stable_and_ignores_what_does_not_change_a_step():
    k = _key()
    assert k == _key() and len(k) == 24
    assert _key(_with(BASE_TREE, "optim", base_lr=5.0, base_batch_size=64)) == k  # the LR
    assert _key({**BASE_TREE, "schedule": {"warmup_epochs": 2}, "seed": 3}) == k  # schedule, seed
    assert _key(_with(BASE_TREE, "data", train_subset=100, global_batch_size=999)) == k  # batch is its own arg


@pytest.mark.parametrize("change", [
    dict(batch=64), dict(cpus=2), dict(workers=2), dict(use_gpu=True),
    dict(machine={**MACHINE, "hostname": "node-b"}), dict(machine={**MACHINE, "cpu_count": 16}),
    dict(machine={**MACHINE, "torch": "2.12.0"}),
    dict(tree={**BASE_TREE, "precision": "bf16"}),
    dict(tree=_with(BASE_TREE, "model", hidden_sizes=[128])),
    dict(tree=_with(BASE_TREE, "data", dataset="fashion-mnist")),
    dict(tree=_with(BASE_TREE, "optim", name="lars")),
    dict(tree=_with(BASE_TREE, "task", name="charlm")),
], ids=lambda c: next(iter(c)) + ("" if "machine" not in c else "-" + next(
    k for k in MACHINE if c["machine"][k] != MACHINE[k])))
def test_cache_key_changes_with_the_setup_the_batch_and_the_machine(change):
    assert _key(**change) != _key()


def test_machine_fingerprint_names_host_cpus_and_torch():
    import torch

    fp = tp.machine_fingerprint()
    assert fp["torch"] == torch.__version__ and fp["cpu_count"] >= 1 and fp["hostname"]


# ----------------------------------------------------------------------------- the measurement
def test_summarize_drops_warmup_and_takes_the_lower_decile():
    times = [1.0, 0.9] + [0.010] * 58 + [0.012] * 40  # 100 steps: the first 10 (the slow ones too) dropped
    e = tp.summarize(256, times, per_worker_batch=256, grad_accum_steps=1)
    assert e["warmup_steps"] == 10 and e["steps_timed"] == 90
    assert e["step_s"] == pytest.approx(0.010) and e["step_s_median"] == pytest.approx(0.010)
    assert e["estimator"] == "wall_p10" and e["step_s_cpu_median"] is None
    # a slow spell (another user's job) on 40% of the steps moves the median, not the step time
    slow = tp.summarize(256, [1.0] * 10 + [0.010] * 54 + [0.020] * 36, per_worker_batch=256, grad_accum_steps=1)
    assert slow["step_s"] == pytest.approx(0.010) and slow["step_s_median"] == pytest.approx(0.010)
    slower = tp.summarize(256, [1.0] * 10 + [0.010] * 40 + [0.020] * 50, per_worker_batch=256, grad_accum_steps=1)
    assert slower["step_s"] == pytest.approx(0.010) and slower["step_s_median"] == pytest.approx(0.020)
    assert e["examples_per_s"] == pytest.approx(25600)
    assert e["step_s_p10"] <= e["step_s"] <= e["step_s_p90"]


def test_with_cpu_times_the_step_time_is_their_median():
    # one thread: a step preempted by other processes takes longer on the wall-clock, not in the thread's CPU time
    walls = [1.0] * 10 + [0.010] * 20 + [0.030] * 70
    cpus = [1.0] * 10 + [0.010] * 90
    e = tp.summarize(256, walls, per_worker_batch=256, grad_accum_steps=1, cpu_times=cpus)
    assert e["estimator"] == "thread_cpu_median" and e["step_s"] == pytest.approx(0.010)
    assert e["step_s_median"] == pytest.approx(0.030)  # the wall-clock median stays beside it


def test_measure_runs_the_loop_pieces_on_each_batch_within_the_budget():
    trees = {b: tp._with_batch(BASE_TREE, b) for b in (16, 128)}
    out = tp.measure(trees, workers=1, cpus=1, use_gpu=False, budget_s=0.5, max_steps=60)
    assert [e["global_batch_size"] for e in out] == [16, 128]
    for e in out:
        assert e["step_s"] > 0 and e["steps_timed"] + e["warmup_steps"] <= 60
        assert e["estimator"] == "thread_cpu_median" and e["step_s"] == e["step_s_cpu_median"]
        assert e["measured_s"] < 5
        assert 0 < e["input_share"] < 1 and e["input_s"] == pytest.approx(e["input_share"] * e["step_s"])
    assert out[1]["step_s"] > out[0]["step_s"] * 0.5  # a larger batch is not much cheaper per step


def _study(tmp_path, **over):
    import yaml

    from largebatch.config import load_study

    raw = {"name": "t", "base": {k: v for k, v in BASE_TREE.items() if k in ("model", "data", "optim")},
           "search": {"data.global_batch_size": {"grid": [64, 128]}, "scaling.rule": {"grid": ["none", "linear"]}},
           "tuner": {"workers_per_trial": 1}, "baseline": {"data.global_batch_size": 16}}
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    raw["base"]["data"] = {k: v for k, v in raw["base"]["data"].items() if v is not None}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_study(p)


def test_study_batches_are_the_baselines_and_every_searched_one(tmp_path):
    from largebatch.config import baseline_trial

    s = _study(tmp_path)
    assert tp.skip_reason(s) is None
    # the evaluation subset is no part of a training step: searching it keeps the profile
    assert tp.skip_reason(_study(tmp_path, search={"data.eval_subset": {"grid": [100, 200]}})) is None
    trees = tp.study_batches(s, s.base.model_dump(mode="json"), baseline_trial(s).model_dump(mode="json"))
    assert list(trees) == [16, 64, 128]
    assert all(t["data"]["global_batch_size"] == b for b, t in trees.items())


@pytest.mark.parametrize("over, words", [
    ({"tuner": {"profile": False}}, "tuner.profile is false"),
    ({"search": {"model.hidden_sizes": {"grid": [[32], [64]]}}}, "model.hidden_sizes"),
    ({"search": {"data.global_batch_size": {"randint": [16, 256]}}, "tuner": {"searcher": "random"}},
     "sampled from a range"),
])
def test_what_is_not_profiled_says_why(tmp_path, over, words):
    assert words in tp.skip_reason(_study(tmp_path, **over))


def test_describe_lines():
    assert "measured wall-clock" in tp.describe({"status": "off", "reason": "x"})
    line = tp.describe(PROFILE)
    assert "B=1024 12 ms/step" in line and "measured alone" in line


class _FakeTracker:
    def __init__(self):
        self.batches, self.texts = [], {}
        self.client = self

    def log_batch(self, run_id, metrics=(), params=()):
        self.batches.append((run_id, list(metrics), list(params)))

    def log_text(self, run_id, text, name):
        self.texts[name] = text


def test_a_study_that_cannot_be_profiled_logs_why_and_goes_on(tmp_path, capsys):
    import json

    s = _study(tmp_path, tuner={"profile": False})
    tracker = _FakeTracker()
    prof = tp.study_profile(s, tracker, "parent", s.base.model_dump(mode="json"), s.base.model_dump(mode="json"),
                            str(tmp_path), resumed=False)
    assert prof["status"] == "off" and prof["entries"] == []
    assert "tuner.profile is false" in capsys.readouterr().out
    assert json.loads(tracker.texts[tp.ARTIFACT])["reason"] == prof["reason"]
    (_, metrics, params), = tracker.batches
    assert metrics == [] and [(p.key, p.value) for p in params] == [("throughput_profile", "off")]


# ------------------------------------------------------------------------- issue #26: a profile that cannot go stale
USER_TASK = '''
import torch
from torch import nn
from largebatch.tasks import Metric, Task, TaskData

HIDDEN = {hidden}


def make_task(n=256):
    def data(cfg):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 8, generator=g)
        return TaskData(train=(x, x.sum(1, keepdim=True)), eval=(x[:64], x[:64].sum(1, keepdim=True)))

    def model(cfg, data):
        return nn.Sequential(nn.Linear(8, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))

    def loss(out, y):
        return {loss}

    return Task(data=data, model=model, loss=loss,
                metrics=(Metric("mse", "min", lambda o, y: (o - y).square().flatten()),))
'''


def _user_study(tmp_path, monkeypatch, module: str, hidden: int, loss: str = "(out - y).square().mean()"):
    """A study of a user task written to tmp_path/<module>.py, loaded as a new CLI process would (the module
    imported afresh)."""
    import sys

    import yaml

    from largebatch.config import load_study

    (tmp_path / f"{module}.py").write_text(USER_TASK.format(hidden=hidden, loss=loss))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump({
        "name": "user", "base": {"task": {"name": f"{module}:make_task"}, "data": {"global_batch_size": 32},
                                 "optim": {"base_lr": 0.01, "base_batch_size": 32}},
        "search": {"data.global_batch_size": {"grid": [64]}}, "baseline": {"data.global_batch_size": 16},
        "tuner": {"metric": "val_mse"}}))
    return load_study(p)


def _here(fn, opts, *args, **kwargs):
    """profile_study's `run` without Ray: the function in this process, the measurement kept short."""
    if fn is tp.measure:
        kwargs.update(budget_s=0.2, max_steps=24)
    return fn(*args, **kwargs)


def _profile(study, root):
    from largebatch.config import baseline_trial

    return tp.profile_study(study, study.base.model_dump(mode="json"), baseline_trial(study).model_dump(mode="json"),
                            root, run=_here)


def test_a_changed_model_in_a_user_task_gets_a_new_profile(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    first = _profile(_user_study(tmp_path, monkeypatch, "lb_user_wide", hidden=4), root)
    assert first["status"] == "measured" and not any(e["cached"] for e in first["entries"])
    same = _profile(_user_study(tmp_path, monkeypatch, "lb_user_wide", hidden=4), root)
    assert same["status"] == "cached"  # nothing changed: the cache still works
    assert [e["key"] for e in same["entries"]] == [e["key"] for e in first["entries"]]
    # the model made 64x wider in the user's file: a new fingerprint, every batch size measured again
    wide = _profile(_user_study(tmp_path, monkeypatch, "lb_user_wide", hidden=256), root)
    assert wide["status"] == "measured" and not any(e["cached"] for e in wide["entries"])
    assert wide["fingerprint"]["model"]["parameters"] > 30 * first["fingerprint"]["model"]["parameters"]
    assert {e["key"] for e in wide["entries"]}.isdisjoint(e["key"] for e in first["entries"])
    assert len(list((root / tp.CACHE_DIR).glob("*.json"))) == 4  # 2 batch sizes x 2 models


def test_the_key_follows_the_task_code_even_when_the_shapes_stay(tmp_path, monkeypatch):
    from largebatch.tune.fingerprint import step_fingerprint

    tree = _user_study(tmp_path, monkeypatch, "lb_user_code", hidden=4).base.model_dump(mode="json")
    a = step_fingerprint(tree)
    assert a == step_fingerprint(tree)  # stable
    tree = _user_study(tmp_path, monkeypatch, "lb_user_code", hidden=4,
                       loss="(out - y).abs().mean() + (out - y).square().mean()").base.model_dump(mode="json")
    b = step_fingerprint(tree)
    assert b["model"] == a["model"] and b["data"] == a["data"]
    assert b["code"]["task"]["lb_user_code"] != a["code"]["task"]["lb_user_code"] and b["digest"] != a["digest"]
    assert "digits" not in str(a["data"]) and a["data"]["kind"] == "tensors"


def test_the_data_pipeline_is_in_the_fingerprint():
    from torch.utils.data import Subset

    from largebatch.tune.fingerprint import split_pipeline
    from tests.unit.task_fixtures import Indexed

    plain, mods = split_pipeline(Indexed(8))
    assert plain["classes"] == ["tests.unit.task_fixtures.Indexed"] and mods == ["tests.unit.task_fixtures"]
    assert plain["item"] == ["(2,) torch.float32", "() torch.int64"]
    wrapped, _ = split_pipeline(Subset(Indexed(8), [0, 1]))
    assert wrapped["classes"][1:] == plain["classes"] and wrapped != plain


def test_when_the_fingerprint_fails_the_profile_is_measured_and_not_cached(tmp_path, monkeypatch, capsys):
    from largebatch.tune import fingerprint

    def broken(tree):
        raise RuntimeError("the model cannot be built here")

    monkeypatch.setattr(fingerprint, "step_fingerprint", broken)
    study = _user_study(tmp_path, monkeypatch, "lb_user_broken", hidden=4)
    for _ in range(2):
        prof = _profile(study, tmp_path / "runs")
        assert prof["status"] == "measured" and prof["fingerprint"]["digest"] is None
    assert not (tmp_path / "runs" / tp.CACHE_DIR).exists()
    assert "not cached: the step's fingerprint failed (RuntimeError: the model cannot be built here)" in \
        capsys.readouterr().out


def test_the_input_pipelines_share_of_the_step_is_measured_and_named():
    e = tp.summarize(256, [0.010] * 20, per_worker_batch=256, grad_accum_steps=1, cpu_times=[0.008] * 20,
                     input_times=[0.006] * 20)
    assert e["input_share"] == pytest.approx(0.6) and e["input_s"] == pytest.approx(0.6 * 0.008)
    assert tp.summarize(256, [0.01] * 20, per_worker_batch=256, grad_accum_steps=1)["input_share"] is None
    prof = profile(B16=0.5, B1024=12.0)
    assert tp.input_note(prof) is None and "input pipeline" not in tp.describe(prof)
    prof["entries"][1].update(input_share=0.67)
    prof["entries"][0].update(input_share=0.1)
    assert tp.describe(prof).endswith("; the step times include the input pipeline, which takes 67% at B=1024 of "
                                      "the step")
    assert "B=16" not in tp.input_note(prof)
    prof["fingerprint"] = {"data": {"kind": "dataset", "getitems": [False]}}  # read item by item: say what helps
    assert tp.input_note(prof).endswith("(its Dataset is read item by item: give it __getitems__, or use tensors)")


def test_the_driver_computes_the_fingerprint_in_a_thread_and_the_profile_uses_it(tmp_path, monkeypatch):
    from largebatch.tune.fingerprint import step_fingerprint

    study = _user_study(tmp_path, monkeypatch, "lb_user_thread", hidden=4)
    tree = study.base.model_dump(mode="json")
    future = tp.fingerprint_while_ray_starts(study, tree)
    assert future.result(timeout=60) == step_fingerprint(tree)
    prof = tp.profile_study(study, tree, tree, tmp_path / "runs", run=_here, fingerprint=future)
    assert prof["fingerprint"] == future.result()
    off = study.model_copy(update={"tuner": study.tuner.model_copy(update={"profile": False})})
    assert tp.fingerprint_while_ray_starts(off, tree) is None  # not profiled: nothing built
