"""Loop overhead (docs/design.md §9): steady-state examples/s of our per-worker loop vs a minimal hand-written loop.

Both run in this process on the same model (create_model, same seed), data (Fashion-MNIST in memory), global
batch, optimizer hyperparameters and BLAS threads. Throughput has one definition for both: the examples of an
epoch over the time from the first batch to the end of the last optimizer step (the loop's own `throughput`;
evaluation and checkpointing are outside it). The first epoch of every run is dropped (warm-up).

A third variant, the hand loop plus the loop's per-step metric accumulation (loss sum, correct count, example
count as tensors, no .item()), attributes the overhead: metrics vs everything else (LR schedule, contexts).
Goal: ours / hand >= 0.97.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from bench import common

NAME = "loop_overhead"
GOAL = 0.97


def hand_loop(cfg, data, *, epochs: int, with_metrics: bool = False) -> list[float]:
    """The minimal PyTorch loop: permute, slice, forward, loss, backward, step. Returns examples/s per epoch."""
    from largebatch.models import create_model

    B = cfg.data.global_batch_size
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, data.input_shape, data.num_classes,
                         hidden_sizes=tuple(cfg.model.hidden_sizes))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.base_lr, momentum=cfg.optim.momentum)
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    steps = n // B
    g = torch.Generator().manual_seed(cfg.seed)
    rates = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        sums = torch.zeros(3, dtype=torch.float64)
        t = time.perf_counter()
        for s in range(steps):
            idx = perm[s * B:(s + 1) * B]
            xb, yb = x[idx], y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            if with_metrics:  # what our loop adds per micro-step
                sums[0] += loss.detach().double() * yb.numel()
                sums[1] += (out.detach().argmax(1) == yb).sum()
                sums[2] += yb.numel()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rates.append(steps * B / (time.perf_counter() - t))
        sums.tolist()
    return rates


def _per_call_us(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def attribution(cfg, data, hand_examples_per_s: float, n: int = 2000) -> dict[str, Any]:
    """What the loop adds per optimizer step, each part timed alone (microseconds, and as a share of the hand
    loop's step time). Parts: the LR schedule lookup, the metric accumulation, `loss / accum` (a graph node even
    when accum == 1), and the decay/no-decay param groups (two foreach updates instead of one)."""
    from largebatch.config import resolve
    from largebatch.models import create_model
    from largebatch.optim import create_optimizer

    B = cfg.data.global_batch_size
    res = resolve(cfg, 1, train_size=int(data.y_train.shape[0]))
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, data.input_shape, data.num_classes,
                         hidden_sizes=tuple(cfg.model.hidden_sizes))
    ours = create_optimizer(model, cfg.optim.name, res.peak_lr, momentum=cfg.optim.momentum)
    one = torch.optim.SGD(model.parameters(), lr=res.peak_lr, momentum=cfg.optim.momentum)
    xb, yb = data.x_train[:B], data.y_train[:B]
    out = model(xb)
    loss = F.cross_entropy(out, yb)
    loss.backward()
    sums = torch.zeros(3, dtype=torch.float64)

    def lr_schedule():
        lr = res.lr_at(123)
        for g in ours.param_groups:
            g["lr"] = lr

    def metrics():
        sums[0] += loss.detach().double() * yb.numel()
        sums[1] += (out.detach().argmax(1) == yb).sum()
        sums[2] += yb.numel()

    leaf = torch.ones((), requires_grad=True)  # the division acts on the scalar loss: its cost does not depend on B

    def scaled_backward():
        (leaf * 1.0 / 1).backward()

    def plain_backward():
        (leaf * 1.0).backward()

    parts = {"lr_schedule": _per_call_us(lr_schedule, n), "metrics": _per_call_us(metrics, n)}
    # differences of two timings: alternated blocks, medians
    back = common.alternate({"scaled": lambda: _per_call_us(scaled_backward, n),
                             "plain": lambda: _per_call_us(plain_backward, n)}, 6)
    parts["loss_div_accum"] = max(0.0, common.median(back["scaled"]) - common.median(back["plain"]))
    steps = common.alternate({"two_groups": lambda: _per_call_us(ours.step, n // 4),
                              "one_group": lambda: _per_call_us(one.step, n // 4)}, 6)
    parts["param_groups"] = max(0.0, common.median(steps["two_groups"]) - common.median(steps["one_group"]))
    step_us = B / hand_examples_per_s * 1e6
    return {"hand_step_us": step_us, "us_per_step": parts,
            "share_of_hand_step": {k: v / step_us for k, v in parts.items()}}


def run(quick: bool = False) -> dict[str, Any]:
    batches = (32, 256, 2048)
    subset = 4096 if quick else None
    epochs = 2 if quick else 4  # 4: the median of 3 steady epochs per run shrugs off one noisy epoch
    rounds = 2 if quick else 5
    common.set_threads()
    data = common.dataset("fashion-mnist", subset)
    rows = []
    for B in batches:
        cfg = common.trial_config({"data.global_batch_size": B, "data.train_subset": subset, "budget.epochs": epochs})
        per = common.alternate({  # the defaults bind this batch's config (alternate calls them at once)
            "ours": lambda cfg=cfg: common.steady_throughput(common.run_in_process(cfg, data)),
            "hand": lambda cfg=cfg: common.median(hand_loop(cfg, data, epochs=epochs)[1:]),
            "hand_metrics": lambda cfg=cfg: common.median(hand_loop(cfg, data, epochs=epochs, with_metrics=True)[1:]),
        }, rounds)
        ratios = [common.ratio(o, h) for o, h in zip(per["ours"], per["hand"])]
        rows.append({
            "global_batch_size": B,
            "examples_per_s": {k: common.median(v) for k, v in per.items()},
            "rounds": per,
            "ratio_ours_vs_hand": common.median(ratios),  # median of the per-round (paired) ratios
            "ratio_per_round": ratios,
            "ratio_hand_metrics_vs_hand": common.median(
                [common.ratio(m, h) for m, h in zip(per["hand_metrics"], per["hand"])]),
            "attribution": attribution(cfg, data, common.median(per["hand"]), n=200 if quick else 2000),
        })
    worst = min(r["ratio_ours_vs_hand"] for r in rows)
    summary = [common.figure(f"loop / hand-written examples/s, B={r['global_batch_size']}", r["ratio_ours_vs_hand"],
                             goal=f">= {GOAL}", met=r["ratio_ours_vs_hand"] >= GOAL, key="loop") for r in rows]
    return {
        "settings": {"dataset": "fashion-mnist", "train_subset": subset, "model": "mlp 256-128", "optimizer":
                     "sgd momentum 0.9", "epochs_per_run": epochs, "rounds": rounds, "threads": common.THREADS,
                     "steady_state": "epochs after the first; median over epochs, then over rounds"},
        "rows": rows,
        "worst_ratio": worst,
        "summary": summary,
    }
