"""`make gpu-check`: a short 1-GPU trial of each built-in task (bf16 autocast, data on the device), with throughput.

On a machine without a CUDA GPU it says so and exits 0, claiming nothing. It runs the real loop in-process (no Ray):
classification (MLP on a Fashion-MNIST subset) and charlm (the byte-level GPT on a fortunes subset).
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Optional

CHECKS = {
    "classification": {"data": {"dataset": "fashion-mnist", "train_subset": 16384, "global_batch_size": 1024},
                       "optim": {"name": "sgd", "base_lr": 0.1, "base_batch_size": 1024}},
    "charlm": {"task": {"name": "charlm", "kwargs": {"eval_windows": 1024}},
               "data": {"train_subset": 8192, "global_batch_size": 256},
               "optim": {"name": "adamw", "base_lr": 0.002, "base_batch_size": 256}},
}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no GPU (torch.cuda.is_available() is False); nothing was run")
        return 0
    from largebatch.config import parse_trial, resolve
    from largebatch.train.loop import WorkerContext, train_worker

    device = torch.device("cuda", 0)
    print(f"gpu-check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    for name, tree in CHECKS.items():
        cfg = parse_trial({**tree, "precision": "bf16", "budget": {"epochs": 2}}, source="gpu-check", prefix="")
        history: list[dict] = []

        def report(metrics: dict, ckpt: Optional[str]) -> None:
            history.append(metrics)
            if ckpt:
                shutil.rmtree(ckpt, ignore_errors=True)

        t = time.time()
        final = train_worker(resolve(cfg, 1), WorkerContext(device=device, report=report))
        quality = {k: round(v, 4) for k, v in final.items() if k.startswith("val_")}
        print(f"gpu-check: {name}: {final['status']}, {history[-1]['throughput']:.0f} examples/s (last epoch), "
              f"{time.time() - t:.1f} s, {quality}")
        if final["status"] != "completed":
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
