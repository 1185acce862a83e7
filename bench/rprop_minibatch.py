"""Rprop below the full batch (issue #30): why `rprop` is refused at a global batch smaller than the training set.

Rprop steps each weight by its own step size in the direction of the gradient's sign, growing the step while the
sign holds and halving it when the sign flips. Mini-batches flip signs from step to step by sampling noise alone, so
the step sizes shrink; the claim tested: Rprop at a mini-batch ends far below Rprop at the full batch, at the same
number of steps and more examples.

A plain torch loop (largebatch's own loop refuses the configuration under test): LeNet on the first --subset
Fashion-MNIST training examples (data/datasets.py, seeded), torch.optim.Rprop at lr 0.01 (its first step) and its
default etas and step bounds, one thread; each batch size trains for about --steps optimizer steps (whole epochs),
then the accuracy on the first 1,000 test examples. Seed 0. Output: one line per batch size and a JSON list.

Measured 2026-12-07 on the shared 2-core machine (defaults: --subset 3000, about 300 steps; the full batch gets 100):
full batch (3000) 83.1% in 100 steps, B=1000 81.1% (300 steps), B=250 76.7% (300), B=64 69.8% (322); for scale, SGD
momentum 0.9 at B=16, lr 0.02, 8 epochs (1,496 steps) of the same data reached 82.2%.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def run(batch: int, steps: int, subset: int, lr: float = 0.01) -> dict:
    from largebatch.data.datasets import load_dataset
    from largebatch.models import create_lenet

    d = load_dataset("fashion-mnist", None, subset)
    n = len(d.y_train)
    torch.manual_seed(0)
    model = create_lenet((1, 28, 28), 10)
    opt = torch.optim.Rprop(model.parameters(), lr=lr)
    epochs = max(1, round(steps / (n // batch)))
    t0, done = time.time(), 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(n // batch):
            idx = perm[i * batch:(i + 1) * batch]
            opt.zero_grad()
            F.cross_entropy(model(d.x_train[idx]), d.y_train[idx]).backward()
            opt.step()
            done += 1
    with torch.no_grad():
        acc = (model(d.x_test[:1000]).argmax(1) == d.y_test[:1000]).float().mean().item()
    return {"batch": batch, "epochs": epochs, "steps": done, "val_acc": acc, "s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per mini-batch size (full batch: 1/3)")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 250, 1000])
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [run(args.subset, max(1, args.steps // 3), args.subset)]
    rows += [run(b, args.steps, args.subset) for b in args.batches]
    for r in rows:
        print(f"rprop B={r['batch']:>6} steps={r['steps']:>5} val_acc={r['val_acc']:.3f} ({r['s']:.1f} s)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
