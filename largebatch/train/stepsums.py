"""The training loop's per-step bookkeeping off the hot path (train/loop.py): an epoch's loss and train-metric sums."""
from __future__ import annotations

import torch

# StepSums keeps at most this many bytes of micro-step outputs for the deferred train metrics (the rest are computed
# at once): a classifier's logits for every step between two flushes fit; a language model's usually do not
KEEP_OUTPUT_BYTES = 16 * 2**20


class StepSums:
    """An epoch's training sums on the device: the loss x examples, then one sum per train metric (the counts are
    host integers). A micro-step only keeps references to its detached loss, output and targets, launching no kernel
    for the bookkeeping (a small model's step is bound by per-op dispatch, on a GPU by kernel launches); `flush()`,
    at each divergence check (every DIVERGENCE_CHECK_STEPS steps), computes the train metrics on the kept outputs
    concatenated (metric values are per element, so this is the same as per micro-batch) and adds everything to
    `sums` with a handful of ops. Outputs beyond KEEP_OUTPUT_BYTES get their metric values at once instead."""

    def __init__(self, metrics, device: torch.device):
        self.metrics = list(metrics)
        self.sums = torch.zeros(1 + len(self.metrics), dtype=torch.float64, device=device)
        self.counts = [0] * len(self.metrics)
        self._loss: list[torch.Tensor] = []
        self._n: list[int] = []
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._kept_bytes = 0
        self._values: list[list[torch.Tensor]] = [[] for _ in self.metrics]

    def add(self, loss: torch.Tensor, n: int, out: torch.Tensor, target: torch.Tensor) -> None:
        self._loss.append(loss)
        self._n.append(n)
        if not self.metrics:
            return
        size = out.numel() * out.element_size()
        if self._kept_bytes + size <= KEEP_OUTPUT_BYTES:
            self._kept.append((out, target))
            self._kept_bytes += size
        else:
            self._metric_values(out, target)

    def _metric_values(self, out: torch.Tensor, target: torch.Tensor) -> None:
        for j, m in enumerate(self.metrics):
            v = m.fn(out, target)
            self._values[j].append(v)
            self.counts[j] += v.numel()

    def flush(self) -> torch.Tensor:
        if self._kept:
            try:  # one call per metric over the whole window
                groups = [(torch.cat([o for o, _ in self._kept]), torch.cat([t for _, t in self._kept]))]
            except (RuntimeError, TypeError):  # micro-batches whose shapes do not stack: one call each
                groups = self._kept
            for out, target in groups:
                self._metric_values(out, target)
            self._kept, self._kept_bytes = [], 0
        if self._loss:
            losses = torch.stack(self._loss).double()
            if all(n == self._n[0] for n in self._n):  # equal micro-batches (the usual case): no host->device copy
                loss_sum = losses.sum() * self._n[0]
            else:
                loss_sum = (losses * losses.new_tensor(self._n)).sum()
            parts = [loss_sum, *(torch.cat([v.reshape(-1) for v in vs]).sum(dtype=torch.float64)
                                 for vs in self._values)]
            self.sums += torch.stack(parts)
            self._loss, self._n = [], []
            self._values = [[] for _ in self._values]
        return self.sums
