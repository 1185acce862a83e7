"""The throughput profile of a trial with two or more workers: one worker group, measured alone (docs/design.md §9,
issue #26 item 3).

A one-worker profile leaves DDP's gradient all-reduce out, so a study with `tuner.workers_per_trial: N > 1` is
profiled on a group shaped as its trials are: N Ray actors with one trial worker's resources each
(`tuner.cpus_per_worker` CPUs, one GPU when the study uses them), packed as Ray Train packs a trial's workers
(placement strategy PACK), joined by a torch process group (gloo on CPUs, nccl on GPUs, as train/trial.py's
TorchConfig). Every rank runs tune/measure.py's `collect`: its share of each global batch (global / N), the model in
DistributedDataParallel, the divergence check's all-reduce, every rank stopping at the same step. The group starts
once for every batch size of the study and is removed afterwards, before any trial runs.
"""
from __future__ import annotations

import socket
from typing import Any

READY_S = 120.0  # the group's resources must be free within this (nothing else of the study runs yet)
JOIN_S = 120  # seconds for the ranks to join the process group


class _Rank:
    """One rank of the profile's worker group (a Ray actor)."""

    def address(self) -> tuple[str, int, str]:
        """(this node's IP, a free port on it, the node id): rank 0's serve as the process group's rendezvous."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ip, port, ray.get_runtime_context().get_node_id()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def collect(self, trees: dict[int, dict], *, rank: int, workers: int, master: str, port: int, cpus: int,
                use_gpu: bool, **limits) -> dict[int, dict[str, Any]]:
        from datetime import timedelta

        import torch.distributed as dist

        from largebatch.tune.measure import collect

        dist.init_process_group("nccl" if use_gpu else "gloo", init_method=f"tcp://{master}:{port}", rank=rank,
                                world_size=workers, timeout=timedelta(seconds=JOIN_S))
        try:
            return collect(trees, workers=workers, cpus=cpus, use_gpu=use_gpu, rank=rank, **limits)
        finally:
            dist.destroy_process_group()


def measure_group(trees: dict[int, dict], *, workers: int, cpus: int, use_gpu: bool, **limits) -> list[dict]:
    """Profile the batch sizes on one group of `workers` Ray actors (ray.init done); limits: collect's budget_s,
    max_steps, rounds. Returns the entries (tune/measure.py summarize_group), each with `workers`."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from largebatch.tune.measure import summarize_group

    bundle = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    pg = placement_group([dict(bundle) for _ in range(workers)], strategy="PACK")
    actors = []
    try:
        ready, _ = ray.wait([pg.ready()], timeout=READY_S)
        if not ready:
            raise RuntimeError(f"{workers} workers of {bundle} could not be placed within {READY_S:.0f} s")
        cls = ray.remote(num_cpus=cpus, num_gpus=1 if use_gpu else 0, max_restarts=0)(_Rank)
        actors = [cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
                              ).remote() for i in range(workers)]
        # Ray types an actor's methods (`.remote`) only when they are decorated with @ray.method, and types the new
        # actor as ActorHandle | the class, which ray.kill does not take: hence the ignores below
        master, port, node0 = ray.get(actors[0].address.remote())  # type: ignore[attr-defined]
        nodes = {node0, *ray.get([a.node.remote() for a in actors[1:]])}  # type: ignore[attr-defined]
        refs = [a.collect.remote(trees, rank=i, workers=workers, master=master,  # type: ignore[attr-defined]
                                 port=port, cpus=cpus, use_gpu=use_gpu, **limits) for i, a in enumerate(actors)]
        pending = list(refs)
        while pending:  # a rank that fails raises here at once (the others would wait in a collective)
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        ranks = ray.get(refs)
    finally:
        for a in actors:
            ray.kill(a)  # type: ignore[arg-type]
        remove_placement_group(pg)
    return summarize_group(ranks, cpus=cpus, use_gpu=use_gpu, one_node=len(nodes) == 1)
