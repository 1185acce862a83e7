"""Instruments: gradient noise scale (vs the analytic value), sharpness (vs a known Hessian), their loop hooks
(1 worker with accumulation, 2 gloo workers with the DDP comm hook), trust-ratio telemetry, ghost BN wiring,
steps-to-target, and the report's critical-batch fit and "Why" sections."""
from __future__ import annotations

import math
import os
import shutil
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from largebatch.config import TrialConfig, parse_trial, resolve
from largebatch.data import load_dataset
from largebatch.errors import BadInput
from largebatch.raylib import free_port
from largebatch.instruments.critical_batch import fit_critical_batch
from largebatch.instruments.noise_scale import GradNoiseScale, noise_estimates
from largebatch.instruments.sharpness import top_hessian_eigenvalue
from largebatch.models import GhostBatchNorm2d
from largebatch.report import build_report, format_markdown, write_report
from largebatch.train.loop import WorkerContext, train_worker

# ---------------------------------------------------------------- synthetic linear regression, known covariance
# y = w*.x + eps, x ~ N(0, I_d), eps ~ N(0, s2); loss 0.5 (w.x - y)^2. At w = w* + delta the per-example gradient
# (delta.x - eps) x has mean G = delta and covariance Sigma = (|delta|^2 + s2) I + delta delta^T (Isserlis), so
# B_simple = tr(Sigma)/|G|^2 = (d (|delta|^2 + s2) + |delta|^2) / |delta|^2.
D, S2 = 20, 0.5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models on a shared 2-core machine: one BLAS thread is faster and does not fight other processes
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(D, generator=g)
    delta = torch.randn(D, generator=g)
    delta /= delta.norm()  # |delta|^2 = 1
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    analytic = (D * (1.0 + S2) + 1.0) / 1.0
    return model, w_star, analytic


def _batch(w_star, n, g):
    x = torch.randn(n, D, generator=g)
    return x, x @ w_star + math.sqrt(S2) * torch.randn(n, generator=g)


def _loss(model, x, y):
    return 0.5 * (model(x).squeeze(1) - y).square().mean()


def test_estimators_are_exact_on_expected_norms():
    g2, tr = 2.0, 50.0
    got = noise_estimates(g2 + tr / 8, g2 + tr / 64, 8, 64)
    assert got == pytest.approx((g2, tr))
    with pytest.raises(ValueError):
        noise_estimates(1.0, 1.0, 64, 64)


def test_noise_scale_with_accumulation_matches_analytic():
    """1 worker, accum 8 (the loop's order of calls): micro-batch 16 vs step batch 128, within 25%."""
    model, w_star, analytic = _problem()
    accum, micro = 8, 16
    gns = GradNoiseScale(model, list(model.parameters()), 1, decay=0.99)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):  # the weights stay at w* + delta: every step samples the same G and Sigma
        for i in range(accum):
            (_loss(model, *_batch(w_star, micro, g)) / accum).backward()
            gns.after_backward(i, accum)
        gns.after_sync(micro * accum, micro)
        model.zero_grad(set_to_none=True)
    got = gns.epoch_metrics()["grad_noise_scale"]
    assert got == pytest.approx(analytic, rel=0.25)


def test_noise_scale_unavailable_with_one_worker_and_no_accumulation():
    model, w_star, _ = _problem()
    gns = GradNoiseScale(model, list(model.parameters()), 1)
    _loss(model, *_batch(w_star, 32, torch.Generator().manual_seed(0))).backward()
    gns.after_backward(0, 1)
    gns.after_sync(32, 32)
    assert gns.epoch_metrics() == {}


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # (1) the comm hook on the synthetic problem: local micro-batch 64 per rank vs the all-reduced 128
        model, w_star, analytic = _problem()
        net = nn.parallel.DistributedDataParallel(model)
        gns = GradNoiseScale(net, list(model.parameters()), world, decay=0.99)
        g = torch.Generator().manual_seed(100 + rank)
        grads_ok = True
        for step in range(250):
            x, y = _batch(w_star, 64, g)
            _loss(net, x, y).backward()
            gns.after_backward(0, 1)
            gns.after_sync(64 * world, 64)
            if step == 0:  # training is unchanged by the hook: p.grad is the mean of the ranks' local gradients
                local = torch.autograd.grad(_loss(model, x, y), model.weight)[0]
                dist.all_reduce(local)
                grads_ok = torch.allclose(model.weight.grad, local / world, atol=1e-6)
            net.zero_grad(set_to_none=True)
        value = gns.epoch_metrics()["grad_noise_scale"]
        # (2) the real loop under DDP with every instrument on (sharpness on rank 0 only must not hang)
        cfg = TrialConfig.model_validate({
            "data": {"dataset": "digits", "global_batch_size": 64}, "model": {"name": "mlp", "hidden_sizes": [32]},
            "optim": {"base_lr": 0.05, "base_batch_size": 64}, "budget": {"epochs": 1},
            "instruments": {"grad_noise_scale": True, "sharpness": True, "sharpness_probe_size": 256}})
        data = load_dataset("digits")
        final = train_worker(resolve(cfg, world, train_size=len(data.y_train)), WorkerContext(rank=rank, world=world),
                             data)
        torch.save({"value": value, "analytic": analytic, "grads_ok": grads_ok, "final": final},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        # rank 1 finishes first (sharpness runs on rank 0 alone): tearing gloo down while the peer still holds its
        # connection aborts the process (SIGABRT), so both ranks meet here first. Even after the barrier,
        # destroy_process_group aborted rank 1 about 1 run in 10 under load (gloo's pair threads see the peer close
        # first), so the ranks leave without running gloo's destructors: the results are on disk already.
        dist.barrier()
    sys.stdout.flush()  # only on success: an exception above reaches mp.spawn with its traceback
    os._exit(0)


def test_noise_scale_under_ddp_comm_hook_two_gloo_workers(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["grads_ok"] and r1["grads_ok"]
    assert r0["value"] == pytest.approx(r0["analytic"], rel=0.25)
    assert r0["value"] == pytest.approx(r1["value"])  # one all-reduced figure on every rank
    f0, f1 = r0["final"], r1["final"]
    assert f0["status"] == "completed" and f0["grad_noise_scale"] == pytest.approx(f1["grad_noise_scale"])
    assert math.isfinite(f0["sharpness"]) and f0["sharpness"] > 0 and "sharpness" not in f1


# ---------------------------------------------------------------- sharpness
class Quadratic(nn.Module):
    """loss = 0.5 wᵀAw (returned by forward; the Hessian is A)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = a
        self.w = nn.Parameter(torch.randn(a.shape[0], generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return 0.5 * self.w @ self.a @ self.w


def test_sharpness_is_the_top_eigenvalue_of_a_quadratic():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    eig = torch.tensor([7.5, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.8, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)
    a = (q * eig) @ q.T
    model = Quadratic(a).double()
    lam = top_hessian_eigenvalue(model, torch.zeros(1), torch.zeros(1), loss_fn=lambda out, y: out)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(a).max()), rel=1e-3)


def test_sharpness_of_least_squares_and_bn_in_eval_mode():
    """Hessian of 0.5·mean((Xw - y)²) is XᵀX/n; a BatchNorm model keeps its running stats and train mode."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g) * torch.tensor([3.0, 1, 1, 1, 0.5, 0.5])
    lin = nn.Linear(6, 1, bias=False)
    lam = top_hessian_eigenvalue(lin, x, torch.zeros(256),
                                 loss_fn=lambda out, y: 0.5 * (out.squeeze(1) - y).square().mean())
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(x.T @ x / 256).max()), rel=1e-3)
    bn_model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    bn_model.train()
    before = bn_model[1].running_mean.clone()
    top_hessian_eigenvalue(bn_model, x, torch.randint(0, 3, (256,), generator=g))
    assert bn_model.training and torch.equal(bn_model[1].running_mean, before)


# ---------------------------------------------------------------- loop hooks (1 worker, in-process)
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _run(digits, **sections):
    tree = {"data": {"dataset": "digits", "global_batch_size": 64}, "model": {"name": "mlp", "hidden_sizes": [32]},
            "optim": {"name": "sgd", "base_lr": 0.05, "base_batch_size": 64}, "budget": {"epochs": 2}}
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    reports = []
    final = train_worker(resolve(TrialConfig.model_validate(tree), 1, train_size=len(digits.y_train)),
                         WorkerContext(report=lambda m, ckpt: (reports.append(m), shutil.rmtree(ckpt or "", True))),
                         digits)
    return final, reports


def test_loop_instruments_off_by_default_and_on_when_asked(digits):
    final, reports = _run(digits)
    assert not {"grad_noise_scale", "sharpness", "trust_ratio_min"} & {k for r in reports for k in r}
    final, reports = _run(digits, data={"grad_accum_steps": 2},
                          instruments={"grad_noise_scale": True, "sharpness": True, "sharpness_every_epochs": 1,
                                       "sharpness_probe_size": 256})
    for r in reports:  # every epoch: noise scale and (every_epochs=1) sharpness
        assert math.isfinite(r["grad_noise_scale"]) and r["sharpness"] > 0
        assert r["sharpness_x_lr_over_2"] == pytest.approx(r["sharpness"] * r["lr"] / 2)


def test_loop_trust_ratio_telemetry_for_lars(digits):
    final, _ = _run(digits, optim={"name": "lars", "base_lr": 1.0}, budget={"epochs": 1})
    assert 0 < final["trust_ratio_min"] <= final["trust_ratio_median"] <= final["trust_ratio_max"]


def test_loop_records_steps_examples_and_time_to_target(digits):
    final, reports = _run(digits, budget={"epochs": 3, "target_val_acc": 0.5})
    first = next(r for r in reports if r["val_acc"] >= 0.5)
    assert final["steps_to_target"] == first["steps"]
    assert final["examples_to_target"] == first["steps"] * 64 == first["examples_seen"]
    assert 0 < final["time_to_target_s"] <= final["wall_s"]


def test_loop_wires_ghost_batch_norm(digits, monkeypatch):
    built = []
    import largebatch.tasks.classification as cls_task  # the classification task builds the model

    real = cls_task.create_model
    monkeypatch.setattr(cls_task, "create_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    final, _ = _run(digits, model={"name": "resnet", "depth": 8, "width": 4, "ghost_batch_size": 16},
                    budget={"epochs": 1})
    ghosts = [m for m in built[0].modules() if isinstance(m, GhostBatchNorm2d)]
    assert ghosts and all(m.ghost_batch_size == 16 for m in ghosts) and final["status"] == "completed"
    with pytest.raises(BadInput, match="ghost_batch_size"):
        parse_trial({"model": {"ghost_batch_size": 1}})


# ---------------------------------------------------------------- critical batch and the report
def test_fit_recovers_s_min_and_e_min():
    s_min, e_min = 200.0, 51200.0  # B_crit = 256
    batches = [16, 64, 256, 1024, 4096]
    fit = fit_critical_batch(batches, [s_min + e_min / b for b in batches])
    assert fit["S_min"] == pytest.approx(s_min) and fit["E_min"] == pytest.approx(e_min)
    assert fit["B_crit"] == pytest.approx(256.0)
    assert fit_critical_batch([256], [100.0]) is None
    assert fit_critical_batch([16, 64], [100.0, 400.0]) is None  # steps rising with B: no physical fit


def _rec(batch, rule, *, steps, gns, sharp, acc, baseline=False, variant="", ramp=False):
    return {"trial_id": f"{batch}-{rule}-{variant}", "is_baseline": baseline, "global_batch_size": batch,
            "rule": rule, "warmup_epochs": 0.0, "optimizer": "sgd", "base_lr": 0.01, "status": "completed",
            "best_val_acc": acc, "wall_s": 1000.0 / batch, "steps": steps, "steps_to_target": steps,
            "examples_to_target": steps * batch, "time_to_target_s": 1.0, "grad_noise_scale_mean": gns,
            "grad_noise_scale": 1e9, "sharpness": sharp, "sharpness_x_lr_over_2": sharp * 0.01,
            "variant": variant, "batch_ramp": ramp}


def test_report_critical_batch_and_why_sections(tmp_path):
    s = lambda b: 300 + 300 * 128 / b  # noqa: E731  (B_crit = 128)
    recs = [_rec(16, "none", steps=s(16), gns=100, sharp=5.0, acc=0.90, baseline=True)]
    for b in (64, 256, 1024):
        recs.append(_rec(b, "none", steps=s(b) * 1.5, gns=120, sharp=20.0, acc=0.85))
        recs.append(_rec(b, "linear", steps=s(b), gns=140, sharp=8.0, acc=0.895))
    recs.append(_rec(256, "none", steps=10, gns=1, sharp=1, acc=0.80, variant="factors=[5.0, 5.0]", ramp=True))
    report = build_report(recs)
    cb = report["critical_batch"]
    assert cb["fit"]["B_crit"] == pytest.approx(128, rel=1e-6)  # the ramp trial stays out of the fit
    assert [p["global_batch_size"] for p in cb["points"]] == [16, 64, 256, 1024]
    assert cb["grad_noise_scale_mean"] == pytest.approx((100 + 3 * 120 + 3 * 140 + 1) / 8)  # means, not last
    why = report["why"]
    assert {(x["global_batch_size"], x["rule"]) for x in why["sharpness"]} >= {(64, "none"), (64, "linear")}
    assert why["n_compared"] == 3 and why["best_is_flatter"] == 3
    assert len({c["label"] for c in report["configs"] if c["global_batch_size"] == 256}) == 3  # variant kept apart
    md = format_markdown(report)
    assert "## Critical batch" in md and "## Why" in md and "B_crit = E_min/S_min = 128" in md
    names = {p.name for p in write_report(report, recs, tmp_path)}
    assert {"steps_to_target_vs_batch.png", "why_noise_scale_and_sharpness.png"} <= names


def test_records_from_mlflow_carry_instruments_targets_and_variant(tmp_path):
    from largebatch.config import flatten
    from largebatch.records import records_from_mlflow
    from largebatch.tracking import KIND_TAG, STATUS_TAG, TRIAL_TAG, EpochLogger, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp = tracker.experiment_id("instruments")
    parent = tracker.start_run(exp, "study")
    cfg = parse_trial({"schedule": {"decay": "step", "milestones": [4], "batch_ramp": {"milestones": [4],
                                                                                       "factors": [5]}}})
    params = {**flatten(cfg.model_dump(mode="json")), "peak_lr": 0.01, "warmup_epochs": 0.0,
              "searched": "data.global_batch_size,schedule.decay,schedule.batch_ramp.factors"}
    run = tracker.start_run(exp, "B=16", parent_id=parent, params=params,
                            tags={TRIAL_TAG: "t1", KIND_TAG: "trial", STATUS_TAG: "running"})
    logger = EpochLogger(uri, run)
    logger.log_epoch({"epoch": 0, "val_acc": 0.7, "steps": 10, "grad_noise_scale": 10.0})
    logger.log_epoch({"epoch": 1, "val_acc": 0.8, "steps": 20, "grad_noise_scale": 30.0, "sharpness": 4.0,
                      "sharpness_x_lr_over_2": 0.02, "steps_to_target": 20, "examples_to_target": 320,
                      "time_to_target_s": 2.5})
    tracker.log_final(run, {"val_acc": 0.8, "grad_noise_scale": 30.0, "sharpness": 4.0}, "completed")
    (rec,) = records_from_mlflow(uri, exp, parent)
    assert (rec["sharpness"], rec["steps_to_target"], rec["examples_to_target"]) == (4.0, 20, 320)
    assert rec["grad_noise_scale_mean"] == pytest.approx(20.0)  # epochs 0 and 1; the final re-log is not epoch 0
    assert [h["val_acc"] for h in rec["history"]] == [0.7, 0.8]
    assert rec["batch_ramp"] and rec["variant"] == "decay=step factors=[5.0]"
