"""`make gpu-check` (`python -m bench.gpu_check [--json PATH] [--quick]`): the GPU path of the training loop on one
CUDA device, with throughput. No Ray: the real loop (`train_worker`) runs in this process on cuda:0, as an in-process
trial does (train/inprocess.py). What it runs, each on Fashion-MNIST unless named:

- `mlp_fp32` / `mlp_bf16`: the main study's MLP, B=1024, data on the device (index_select batches), fp32 and bf16
  autocast;
- `mlp_bf16_loader0` / `mlp_bf16_loader2`: the same through a host-memory Dataset read by a DataLoader (pinned
  memory, non-blocking copies), with 0 and 2 loader processes: the path of a user's Dataset task on a GPU;
- `resnet_fp32` / `resnet_bf16`: ResNet-20 (width 16), B=512: the convolutions where bf16 autocast uses the tensor
  cores;
- `loop_vs_hand`: our loop against a minimal hand-written PyTorch loop on the device (same model, data, B=256, fp32);
- `charlm_bf16`: the byte-level GPT (charlm task) on the fortunes corpus, bf16.

Each case reports the median examples/s of the epochs after the first (the loop's own `throughput`: its epoch time
ends at a host sync, so it counts the GPU's work), the final validation metrics and the status; every case must
complete, and a classification case must reach val_acc >= 0.7 (not in a `--subset` dry run, too short to learn).
The Ray paths (NCCL process group through Ray Train, a study with `tuner.use_gpu`) are run with the CLI
(`largebatch train` / `largebatch tune` with `--set tuner.use_gpu=true`), see bench/README.md. On a machine without a
CUDA GPU it says so and exits 0, claiming nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from typing import Any, Optional

import torch

from largebatch.vocab import Status

MLP = {"data": {"dataset": "fashion-mnist", "global_batch_size": 1024},
       "model": {"name": "mlp", "hidden_sizes": [256, 128]},
       "optim": {"name": "sgd", "base_lr": 0.1, "base_batch_size": 1024, "momentum": 0.9}}
RESNET = {"data": {"dataset": "fashion-mnist", "global_batch_size": 512},
          "model": {"name": "resnet", "depth": 20, "width": 16},
          "optim": {"name": "sgd", "base_lr": 0.1, "base_batch_size": 512, "momentum": 0.9}}
CHARLM = {"task": {"name": "charlm", "kwargs": {"eval_windows": 1024}},
          "data": {"train_subset": 16384, "global_batch_size": 256},
          "optim": {"name": "adamw", "base_lr": 0.002, "base_batch_size": 256}}


def _tree(base: dict, **over: Any) -> dict:
    tree = json.loads(json.dumps(base))
    for dotted, value in over.items():
        node = tree
        *path, leaf = dotted.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def host_dataset_task(**_: Any):
    """The classification task with its training split as a host-memory Dataset (with `__getitems__`, so the
    DataLoader takes whole batches): the loop reads it through a DataLoader with pinned memory on CUDA."""
    from bench.loader_path import BatchedItems
    from largebatch.tasks import TaskData
    from largebatch.tasks.classification import classification

    base = classification()

    def data(cfg) -> TaskData:
        d = base.data(cfg)
        return TaskData(train=BatchedItems(*d.train), eval=d.eval, info=d.info)

    return dataclasses.replace(base, data=data, name="classification-host-dataset", cache_data=False)


def run_case(tree: dict, device: torch.device, epochs: int) -> dict[str, Any]:
    from largebatch.config import parse_trial, resolve
    from largebatch.train.loop import WorkerContext, train_worker

    cfg = parse_trial({**tree, "budget": {"epochs": epochs}}, source="gpu-check", prefix="")
    history: list[dict] = []

    def report(metrics: dict, ckpt: Optional[str]) -> None:
        history.append(metrics)
        if ckpt:
            shutil.rmtree(ckpt, ignore_errors=True)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.time()
    final = train_worker(resolve(cfg, 1), WorkerContext(device=device, report=report))
    rates = [h["throughput"] for h in history[1:]] or [history[-1]["throughput"]]
    return {"status": final["status"], "examples_per_s": statistics.median(rates), "wall_s": round(time.time() - t, 2),
            "epochs": len(history),
            "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
            **{k: round(v, 4) for k, v in final.items() if k.startswith("val_") and isinstance(v, float)}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_loop(tree: dict, device: torch.device, epochs: int) -> float:
    """The minimal PyTorch loop on the device: permute, index, forward, loss, backward, step; examples/s (median of
    the epochs after the first, each ended by a synchronize)."""
    import torch.nn.functional as F

    from largebatch.config import parse_trial
    from largebatch.data import load_dataset
    from largebatch.models import create_model

    cfg = parse_trial(tree, source="gpu-check", prefix="")
    d = load_dataset(cfg.data.dataset, train_subset=cfg.data.train_subset, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, d.input_shape, d.num_classes,
                         hidden_sizes=tuple(cfg.model.hidden_sizes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.base_lr, momentum=cfg.optim.momentum)
    x, y = d.x_train.to(device), d.y_train.to(device)
    B, n = cfg.data.global_batch_size, x.shape[0]
    rates = []
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        _sync(device)
        t = time.perf_counter()
        for s in range(n // B):
            idx = perm[s * B:(s + 1) * B]
            loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        rates.append((n // B) * B / (time.perf_counter() - t))
    return statistics.median(rates[1:])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer epochs")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu: a dry run of the same cases")
    ap.add_argument("--subset", type=int, default=None,
                    help="data.train_subset of every case, >= 1024 (a dry run; evaluation on 256 examples)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no GPU (torch.cuda.is_available() is False); nothing was run")
        return 0
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here: bf16 autocast is the fast path measured
    torch.backends.cudnn.allow_tf32 = False
    cuda = device.type == "cuda"
    env = {"gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
           "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None}
    print(f"gpu-check: {env}", flush=True)
    e = 3 if args.quick else 5
    task = f"{__name__ if __name__ != '__main__' else 'bench.gpu_check'}:host_dataset_task"
    cases = {
        "mlp_fp32": (_tree(MLP, precision="fp32"), e),
        "mlp_bf16": (_tree(MLP, precision="bf16"), e),
        "mlp_bf16_loader0": (_tree(MLP, precision="bf16", task__name=task, data__loader_workers=0), e),
        "mlp_bf16_loader2": (_tree(MLP, precision="bf16", task__name=task, data__loader_workers=2), e),
        "resnet_fp32": (_tree(RESNET, precision="fp32"), 2 if args.quick else 3),
        "resnet_bf16": (_tree(RESNET, precision="bf16"), 2 if args.quick else 3),
        "loop_b256": (_tree(MLP, precision="fp32", data__global_batch_size=256, optim__base_batch_size=256,
                            optim__base_lr=0.1), e),
        "charlm_bf16": (_tree(CHARLM, precision="bf16"), 2),
    }
    if args.subset:  # a dry run: small training and validation sets
        for tree, _ in cases.values():
            tree["data"].update(train_subset=args.subset, eval_subset=min(args.subset, 256))
    out: dict[str, Any] = {"env": env, "cases": {}}
    failed = []
    for name, (tree, epochs) in cases.items():
        try:
            r = run_case(tree, device, epochs)
        except Exception as ex:  # report every case; the exit status says whether any failed
            r = {"status": "error", "error": f"{type(ex).__name__}: {ex}"}
        out["cases"][name] = r
        print(f"gpu-check: {name}: {r}", flush=True)
        ok = r["status"] == Status.COMPLETED and (bool(args.subset) or "val_acc" not in r or r["val_acc"] >= 0.7)
        if not ok:
            failed.append(name)
    c = out["cases"]
    hand = hand_loop(cases["loop_b256"][0], device, e)
    hand_1024 = hand_loop(cases["mlp_fp32"][0], device, e)
    ratios = {"bf16/fp32 mlp": c["mlp_bf16"].get("examples_per_s", 0) / max(c["mlp_fp32"].get("examples_per_s", 0), 1),
              "bf16/fp32 resnet": (c["resnet_bf16"].get("examples_per_s", 0)
                                   / max(c["resnet_fp32"].get("examples_per_s", 0), 1)),
              "loader0/device-tensors bf16 mlp": (c["mlp_bf16_loader0"].get("examples_per_s", 0)
                                                  / max(c["mlp_bf16"].get("examples_per_s", 0), 1)),
              "loader2/device-tensors bf16 mlp": (c["mlp_bf16_loader2"].get("examples_per_s", 0)
                                                  / max(c["mlp_bf16"].get("examples_per_s", 0), 1)),
              "loop/hand B=256 fp32 mlp": c["loop_b256"].get("examples_per_s", 0) / hand,
              "loop/hand B=1024 fp32 mlp": c["mlp_fp32"].get("examples_per_s", 0) / hand_1024}
    out["hand_examples_per_s"] = {"B=256": hand, "B=1024": hand_1024}
    out["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    out["failed"] = failed
    print(f"gpu-check: ratios {out['ratios']}", flush=True)
    print(f"gpu-check: {'FAILED ' + ', '.join(failed) if failed else 'all cases completed'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
