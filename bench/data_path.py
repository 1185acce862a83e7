"""Data path (docs/design.md §9): the share of the loop's step time spent producing batches, at B=32 and B=2048.

"Producing batches" is everything the loop does to get a batch: `rank_batches` cutting the epoch permutation into
this rank's index tensors, and the two gathers `x_train.index_select(0, idx), y_train.index_select(0, idx)` (what
data/feed.py does). It is timed alone over a whole epoch, alternated with a run of the real loop whose steady-state
epoch time (examples / throughput) is the denominator. Goal: < 3% of the step time.

For contrast, the same batches gathered with advanced indexing `x[idx]` (the same rows, a costlier kernel on CPU:
what the loop did before) and through a per-sample `Dataset.__getitem__` + default collate (what a torch DataLoader
over a TensorDataset does, without worker processes) are timed the same way.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from bench import common

NAME = "data_path"
GOAL = 0.03


def produce_epoch(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, B: int) -> float:
    """Seconds to produce one epoch of batches exactly as the loop does (1 worker, no accumulation)."""
    from largebatch.data import rank_batches

    t = time.perf_counter()
    for micro in rank_batches(perm, B, 0, 1, 1):
        for idx in micro:
            xb, yb = x[idx], y[idx]  # noqa: F841
    return time.perf_counter() - t


def produce_epoch_index_select(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, B: int) -> float:
    """The same batches with `index_select(0, idx)`: one row-gather kernel, no advanced-indexing machinery."""
    from largebatch.data import rank_batches

    t = time.perf_counter()
    for micro in rank_batches(perm, B, 0, 1, 1):
        for idx in micro:
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)  # noqa: F841
    return time.perf_counter() - t


def collate_epoch(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, B: int) -> float:
    """Seconds for the same batches via per-sample __getitem__ + default_collate (the DataLoader way)."""
    from torch.utils.data import TensorDataset, default_collate

    ds = TensorDataset(x, y)
    order = perm.tolist()
    t = time.perf_counter()
    for s in range(len(order) // B):
        default_collate([ds[i] for i in order[s * B:(s + 1) * B]])
    return time.perf_counter() - t


def run(quick: bool = False) -> dict[str, Any]:
    from largebatch.data import epoch_permutation

    batches = (32, 2048)
    subset = 4096 if quick else None
    epochs = 2 if quick else 3
    rounds = 2 if quick else 5
    common.set_threads()
    data = common.dataset("fashion-mnist", subset)
    x, y = data.x_train, data.y_train
    n = int(y.shape[0])
    rows = []
    for B in batches:
        cfg = common.trial_config({"data.global_batch_size": B, "data.train_subset": subset, "budget.epochs": epochs})
        examples = (n // B) * B
        perm = epoch_permutation(n, cfg.seed, 1)[:examples]
        per = common.alternate({  # the defaults bind this batch's values (alternate calls them at once)
            "train_epoch_s": lambda examples=examples, cfg=cfg: examples / common.steady_throughput(
                common.run_in_process(cfg, data)),
            "produce_epoch_s": lambda perm=perm, B=B: produce_epoch(x, y, perm, B),
            "index_select_epoch_s": lambda perm=perm, B=B: produce_epoch_index_select(x, y, perm, B),
            "collate_epoch_s": lambda perm=perm, B=B: collate_epoch(x, y, perm, B),
        }, rounds)
        # paired by round: a burst of load in round r lands on both sides of that round's share
        shares = [common.ratio(p, t) for p, t in zip(per["produce_epoch_s"], per["train_epoch_s"])]
        index_select = [common.ratio(p, t) for p, t in zip(per["index_select_epoch_s"], per["train_epoch_s"])]
        collate = [common.ratio(c, t) for c, t in zip(per["collate_epoch_s"], per["train_epoch_s"])]
        rows.append({
            "global_batch_size": B,
            "steps_per_epoch": n // B,
            "seconds": {k: common.median(v) for k, v in per.items()},
            "rounds": per,
            "share_of_step_time": common.median(shares),
            "share_per_round": shares,
            "index_select_share_of_step_time": common.median(index_select),
            "collate_share_of_step_time": common.median(collate),
            "produce_us_per_step": common.median(per["produce_epoch_s"]) / (n // B) * 1e6,
        })
    summary = summary_rows(rows)
    return {
        "settings": {"dataset": "fashion-mnist", "train_subset": subset, "epochs_per_loop_run": epochs,
                     "rounds": rounds, "threads": common.THREADS,
                     "step_time": "the loop's steady-state epoch: examples / throughput (epochs after the first)"},
        "rows": rows,
        "summary": summary,
    }


def summary_rows(rows: list[dict]) -> list[dict]:
    """The figures: index_select is what the loop's feed does (data/feed.py), so it carries the goal; x[idx] and the
    per-sample path are contrasts."""
    out = [common.figure(f"batch production / step time, B={r['global_batch_size']} (index_select, as the loop)",
                         r["index_select_share_of_step_time"] * 100, unit="%", goal=f"< {GOAL:.0%}",
                         met=r["index_select_share_of_step_time"] < GOAL) for r in rows]
    out += [common.figure(f"same with x[idx] advanced indexing, B={r['global_batch_size']} (contrast)",
                          r["share_of_step_time"] * 100, unit="%") for r in rows]
    out += [common.figure(f"per-sample __getitem__ + collate / step time, B={r['global_batch_size']} (contrast)",
                          r["collate_share_of_step_time"] * 100, unit="%") for r in rows]
    return out
