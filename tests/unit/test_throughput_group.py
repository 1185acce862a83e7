"""Issue #26 item 3: a study with 2+ workers per trial gets a throughput profile too, measured alone on one worker
group (tune/group.py, tune/measure.py collect/summarize_group), keyed by the worker count and consumed by the
report like a one-worker profile (report/speed.py)."""
from __future__ import annotations

import socket

import pytest

from largebatch.report import build_report, format_table
from largebatch.tune import throughput as tp
from largebatch.tune.measure import collect, summarize_group

from tests.unit.test_throughput import BASE_TREE, _here, _study, noisy_study, profile


def _rank(walls, procs, *, cpu=None, fed=None, pwb=16):
    return {"wall": list(walls), "cpu": list(cpu or [p / 2 for p in procs]), "proc": list(procs),
            "fed": list(fed or [w / 10 for w in walls]), "per_worker_batch": pwb, "grad_accum_steps": 1}


# ----------------------------------------------------------------------------- the group's summary
def test_each_step_is_the_slowest_ranks_and_one_cpu_per_worker_takes_the_process_cpu_median():
    # 40 steps: the first 4 (warm-up) are slow; rank 1 is slower than rank 0 on two steps in three
    w0 = [0.5] * 4 + [0.010] * 36
    w1 = [0.5] * 4 + [0.009 if i % 3 == 0 else 0.012 for i in range(36)]
    p0 = [0.5] * 4 + [0.004] * 36
    p1 = [0.5] * 4 + [0.003 if i % 3 == 0 else 0.006 for i in range(36)]
    e, = summarize_group([{64: _rank(w0, p0, pwb=32)}, {64: _rank(w1, p1, pwb=32)}], cpus=1, use_gpu=False,
                         one_node=True)
    assert e["workers"] == 2 and e["global_batch_size"] == 64 and e["per_worker_batch"] == 32
    assert e["estimator"] == "process_cpu_median"
    assert e["warmup_steps"] == 4
    assert e["step_s"] == pytest.approx(0.006)  # the slower rank sets the pace: not rank 0's 0.004
    assert e["step_s_median"] == pytest.approx(0.012)  # each step's slower wall-clock stays beside it
    assert e["examples_per_s"] == pytest.approx(64 / e["step_s"])


@pytest.mark.parametrize("cpus, use_gpu, one_node", [(2, False, True), (1, True, True), (1, False, False)])
def test_more_threads_a_gpu_or_several_nodes_take_the_wallclocks_lower_decile(cpus, use_gpu, one_node):
    # CPU time misses the wait for another node's rank, adds up over threads, and is not a GPU's time
    walls = [0.5] * 5 + [0.010] * 20 + [0.030] * 15
    e, = summarize_group([{64: _rank(walls, [0.001] * 40)}, {64: _rank(walls, [0.001] * 40)}], cpus=cpus,
                         use_gpu=use_gpu, one_node=one_node)
    assert e["estimator"] == "wall_p10" and e["step_s"] == pytest.approx(0.010) and e["step_s_cpu_median"] is None


def test_a_batch_no_rank_timed_is_left_out():
    ranks = [{16: _rank([], []), 64: _rank([0.01] * 12, [0.01] * 12)} for _ in range(2)]
    assert [e["global_batch_size"] for e in summarize_group(ranks, cpus=1, use_gpu=False, one_node=True)] == [64]


# ----------------------------------------------------------------------------- a real group: DDP over gloo
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, trees, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        queue.put((rank, collect(trees, workers=world, cpus=1, use_gpu=False, rank=rank, budget_s=0.4,
                                 max_steps=48)))
    finally:
        dist.destroy_process_group()


def spawned_group(trees, *, workers, cpus, use_gpu, calls=None):
    """tune/group.py's measure_group without Ray: `collect` on `workers` local processes joined by gloo."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, workers, port, trees, queue)) for r in range(workers)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    ranks = [got[r] for r in range(workers)]
    if calls is not None:
        calls.append(ranks)
    return summarize_group(ranks, cpus=cpus, use_gpu=use_gpu, one_node=True)


def _profile_2(tmp, group):
    from largebatch.config import baseline_trial

    study = _study(tmp, tuner={"workers_per_trial": 2})
    return study, tp.profile_study(study, study.base.model_dump(mode="json"),
                                   baseline_trial(study).model_dump(mode="json"), tmp / "runs", run=_here, group=group)


def test_a_two_worker_study_is_profiled_on_one_group(tmp_path):
    calls = []
    study, prof = _profile_2(tmp_path, lambda trees, **kw: spawned_group(trees, calls=calls, **kw))
    assert tp.skip_reason(study) is None
    assert prof["status"] == "measured" and prof["setup"]["workers"] == 2
    assert [e["global_batch_size"] for e in prof["entries"]] == [16, 64, 128]
    for e in prof["entries"]:
        assert e["workers"] == 2 and e["per_worker_batch"] == e["global_batch_size"] // 2  # global / N per rank
        assert e["estimator"] == "process_cpu_median" and e["step_s"] > 0 and e["steps_timed"] >= 5
    (r0, r1), = calls
    for b in (16, 64, 128):
        # every rank stopped at the same step (else DDP's all-reduce would have hung)
        assert len(r0[b]["wall"]) == len(r1[b]["wall"]) <= 48
        # the process's CPU holds this thread's and DDP's communication threads'
        assert sum(r0[b]["proc"]) >= sum(r0[b]["cpu"])


def synthetic_group(trees, *, workers, cpus, use_gpu, calls=None):
    """A group's entries from made-up rank times (the keying and caching around it are what is tested)."""
    if calls is not None:
        calls.append(sorted(trees))
    ranks = [{b: _rank([0.5] * 4 + [b / 1e5] * 20, [0.5] * 4 + [b / 2e5] * 20, pwb=b // workers) for b in trees}
             for _ in range(workers)]
    return summarize_group(ranks, cpus=cpus, use_gpu=use_gpu, one_node=True)


def test_the_group_profile_is_cached_under_the_worker_count(tmp_path, capsys):
    from largebatch.config import baseline_trial

    calls = []
    study, prof = _profile_2(tmp_path, lambda trees, **kw: synthetic_group(trees, calls=calls, **kw))
    assert calls == [[16, 64, 128]]  # one group for every batch size
    assert prof["status"] == "measured" and prof["setup"]["workers"] == 2
    assert [e["step_s"] for e in prof["entries"]] == pytest.approx([16 / 2e5, 64 / 2e5, 128 / 2e5])
    out = capsys.readouterr().out
    assert "3 batch size(s) measured alone in" in out and "(2 workers x 1 CPU," in out
    assert "measured alone on one group of 2 workers" in out
    machine = prof["machine"]
    keyed = {**prof["setup"], "step": prof["fingerprint"]["digest"]}
    files = sorted(p.name for p in (tmp_path / "runs" / tp.CACHE_DIR).glob("*.json"))
    assert files == sorted(f"{tp.cache_key(keyed, b, machine)}.json" for b in (16, 64, 128))

    def no_group(*a, **kw):
        raise AssertionError("measured again")

    again = _profile_2(tmp_path, no_group)[1]
    assert again["status"] == "cached"
    assert [e["step_s"] for e in again["entries"]] == [e["step_s"] for e in prof["entries"]]
    assert "on one group of 2 workers" in tp.describe(again)
    # the same study with one worker per trial is another key: measured in-process, never the group's entries
    one = _study(tmp_path, tuner={"workers_per_trial": 1})
    single = tp.profile_study(one, one.base.model_dump(mode="json"), baseline_trial(one).model_dump(mode="json"),
                              tmp_path / "runs", run=_here, group=no_group)
    assert single["status"] == "measured" and all("workers" not in e for e in single["entries"])
    assert len(list((tmp_path / "runs" / tp.CACHE_DIR).glob("*.json"))) == 6
    assert "group of" not in tp.describe(single)


def test_the_group_measurement_is_in_the_step_fingerprint():
    from largebatch.tune.fingerprint import step_code

    assert "tune/group.py" in step_code()


# ----------------------------------------------------------------------------- the report consumes it
def group_profile_of(**step_ms) -> dict:
    prof = profile(**step_ms)
    for e in prof["entries"]:
        e.update(workers=2, per_worker_batch=e["global_batch_size"] // 2)
    return prof


def test_a_two_worker_profile_gives_projected_speeds_and_says_so():
    prof = group_profile_of(B16=0.5, B1024=12.0, B4096=46.0)
    r = build_report(noisy_study(), tolerance=0.5, profile=prof)
    assert r["speed_basis"] == "projected"
    by_b = {c["global_batch_size"]: c for c in r["configs"]}
    assert by_b[4096]["time_s"] == pytest.approx(140 * 0.046) and by_b[4096]["wall_s_mean"] == 19.1
    assert by_b[4096]["speedup"] == pytest.approx(37500 * 0.0005 / (140 * 0.046))
    assert r["recommended"]["global_batch_size"] == 4096  # the profile's order, not the shared wall-clock's
    assert "measured alone on one group of 2 workers, DDP's gradient all-reduce included, before the search" in \
        format_table(r)
    assert "group of" not in format_table(build_report(noisy_study(), tolerance=0.5, profile=profile(
        B16=0.5, B1024=12.0, B4096=46.0)))


def test_collect_alone_needs_no_process_group():
    trees = {b: tp._with_batch(BASE_TREE, b) for b in (16,)}
    out = collect(trees, workers=1, cpus=1, use_gpu=False, budget_s=0.2, max_steps=16)
    assert len(out[16]["wall"]) == len(out[16]["proc"]) == len(out[16]["cpu"]) == len(out[16]["fed"]) > 0
