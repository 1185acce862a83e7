"""`data.per_worker_batch_cap: auto`: the largest micro-batch that fits, found on each worker before training.

Candidates halve from the largest per-worker batch of the trial (over batch-ramp phases) down to 1. A candidate fits
when one forward + backward of the task's loss at that size, under the trial's autocast, raises no out-of-memory
error (torch.OutOfMemoryError: CUDA, or a CPU allocation that fails) and, when `data.auto_memory_mb` is set, the
tensors autograd saves for backward (the activations, which grow with the batch) stay within it: the stated budget
on a CPU, where running out of memory means the OOM killer, not an exception. All ranks take the minimum of what they
found, so the accumulation is the same everywhere. Under a CPU budget, one forward of a few examples first gives the
saved bytes per example, and the candidates above budget / that are skipped without being allocated: a full-batch
trial (`global_batch_size: full`) never holds the whole training set's activations at once. The weights and buffers
(BatchNorm statistics) are restored after the probe and gradients cleared: the probe leaves no trace in training.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.distributed as dist


def _saved_bytes(model: torch.nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, torch.Tensor],
                 autocast) -> int:
    """Bytes of the tensors autograd saves for backward in one forward of `batch` (no backward; grads untouched)."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast():
            loss_fn(model(batch[0]), batch[1])
    return saved


def _fits(model: torch.nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, torch.Tensor], autocast,
          budget_bytes: Optional[float]) -> bool:
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with autocast():
                loss = loss_fn(model(batch[0]), batch[1])
        if budget_bytes is not None and saved > budget_bytes:
            return False
        loss.backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        if batch[0].device.type == "cuda":
            torch.cuda.empty_cache()


PREVIEW = 8  # examples in the small forward that estimates the saved bytes per example under a CPU budget


def probe_micro_batch(model: torch.nn.Module, loss_fn: Callable, gather: Callable[[torch.Tensor], tuple],
                      largest: int, n_examples: int, autocast, budget_mb: Optional[float] = None,
                      world: int = 1) -> int:
    """The largest of largest, largest/2, ..., 1 that fits on every rank (an all-reduce MIN when world > 1)."""
    state = copy.deepcopy(model.state_dict())
    budget = None if budget_mb is None else budget_mb * 2**20
    size = largest
    try:
        if budget is not None and largest > PREVIEW:
            # saved tensors grow linearly with the batch: skip, unallocated, the candidates that one small forward
            # says exceed the budget (with `full`, the largest is the whole training set)
            per_example = _saved_bytes(model, loss_fn, gather(torch.arange(min(PREVIEW, n_examples))),
                                       autocast) / min(PREVIEW, n_examples)
            while size > 1 and size * per_example > budget:
                size //= 2
        while size > 1 and not _fits(model, loss_fn, gather(torch.arange(min(size, n_examples))), autocast, budget):
            size //= 2
    finally:
        model.load_state_dict(state)
    if world > 1:
        t = torch.tensor([size], dtype=torch.int64, device=next(model.parameters()).device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        size = int(t.item())
    return max(size, 1)
