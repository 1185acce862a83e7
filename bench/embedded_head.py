"""The embedded local head (issue #27): start-up seconds and the memory of all its Ray processes, light vs full.

"before" is the head as `largebatch train|tune` started it until issue #27: `ray start --head` with Ray's defaults
(the dashboard with its module processes, the Ray client server, the autoscaler monitor, the log monitor, an object
store of 30% of memory): `LocalHead(full=True, object_store_mb=None, log_monitor=True)`. "after" is what
`largebatch.raylib.init_ray()` starts now (light head, LARGEBATCH_OBJECT_STORE_MB's default), called as the CLI calls
it. Each run is a new Python child (`common.run_child`) with a new head on free ports and its own token, stopped by
PID; the variants alternate (before after, after before, ...).

Timed: from just before the head's `ray start` is spawned (ray and ray.train.torch already imported, as they are in
`largebatch tune` by then) until `ray.init` returns connected. Memory: 5 s after that (the raylet's prestarted
workers and the dashboard's modules are up by then), the summed RSS of the head's `ray start` process and every
process below it (from /proc), with their count and names; PSS (shared pages split between the processes that map
them) beside it, since RSS counts each shared library once per process. Medians over the rounds; the ratios
after / before are the figures (goal: each at most 0.5).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench import common

SETTLE_S = 5.0


def _proc_mem(pid: int) -> tuple[int, int, str]:
    """(RSS bytes, PSS bytes, name) of one process; zeros when it is gone."""
    try:
        rss = pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        if name.startswith("python") or name.startswith("ray"):  # say which Python: the script or module it runs
            args = [a.decode(errors="replace") for a in cmd if a]
            script = next((Path(a).name for a in args[1:] if a.endswith(".py")), None)
            name = script or (args[2] if len(args) > 2 and args[1] == "-m" else name)
        return rss, pss, name
    except (OSError, ValueError, IndexError):
        return 0, 0, ""


def head_memory(root: int) -> dict[str, Any]:
    from largebatch.raylib import descendants

    pids = sorted({root} | descendants(root))
    rows = [(pid, *_proc_mem(pid)) for pid in pids]
    rows = [r for r in rows if r[1]]
    return {"processes": len(rows), "rss_mb": sum(r[1] for r in rows) / 2**20,
            "pss_mb": sum(r[2] for r in rows) / 2**20,
            "by_process": [{"pid": r[0], "name": r[3], "rss_mb": round(r[1] / 2**20, 1)} for r in rows]}


def child(spec: dict) -> dict:
    """One head, started the `spec["variant"]` way, timed and measured, then stopped."""
    import ray
    import ray.train.torch  # noqa: F401  (imported before the clock starts, as in `largebatch tune`)

    from largebatch import quiet, raylib

    quiet.configure(False)
    os.environ.pop("RAY_ADDRESS", None)
    for k in (raylib.DASHBOARD_ENV, raylib.OBJECT_STORE_ENV):
        os.environ.pop(k, None)
    t0 = time.perf_counter()
    if spec["variant"] == "after":
        raylib.init_ray(num_cpus=2)
        head = raylib._HEAD
    else:  # the head as init_ray started it before issue #27, connected the same way
        os.environ.update(raylib._train_env())
        head = raylib.LocalHead(num_cpus=2, extra_env=quiet.local_head_env(), full=True, object_store_mb=None,
                                log_monitor=True).start()
        raylib._HEAD = head
        raylib._use_head_auth(head)
        ray.init(address=head.address, **quiet.ray_init_kwargs())
    startup_s = time.perf_counter() - t0
    time.sleep(SETTLE_S)
    mem = head_memory(head.proc.pid)
    store = ray.available_resources().get("object_store_memory", 0) / 2**20
    raylib.shutdown_ray()
    return {"variant": spec["variant"], "startup_s": startup_s, "object_store_mb": store, **mem}


def run(quick: bool = False) -> dict[str, Any]:
    rounds = 1 if quick else 3
    runs = common.alternate({v: (lambda v=v: common.run_child("bench.embedded_head:child", {"variant": v},
                                                               timeout_s=600, log_name=f"head-{v}"))
                             for v in ("before", "after")}, rounds)
    med = {v: {k: common.median(r[k] for r in rs) for k in ("startup_s", "rss_mb", "pss_mb", "processes")}
           for v, rs in runs.items()}
    b, a = med["before"], med["after"]
    summary = [
        common.figure("embedded head start-up s, after / before (spawn to ray.init connected)",
                      common.ratio(a["startup_s"], b["startup_s"]), goal="<= 0.5",
                      met=common.ratio(a["startup_s"], b["startup_s"]) <= 0.5,
                      shown=f"{common.ratio(a['startup_s'], b['startup_s']):.2f} ({a['startup_s']:.1f} s vs "
                            f"{b['startup_s']:.1f} s)"),
        common.figure("embedded head RSS of all its Ray processes, after / before",
                      common.ratio(a["rss_mb"], b["rss_mb"]), goal="<= 0.5",
                      met=common.ratio(a["rss_mb"], b["rss_mb"]) <= 0.5,
                      shown=f"{common.ratio(a['rss_mb'], b['rss_mb']):.2f} ({a['rss_mb']:.0f} MiB in "
                            f"{a['processes']:.0f} processes vs {b['rss_mb']:.0f} MiB in {b['processes']:.0f})"),
        common.figure("the same in PSS (shared pages split), after / before", common.ratio(a["pss_mb"], b["pss_mb"]),
                      shown=f"{common.ratio(a['pss_mb'], b['pss_mb']):.2f} ({a['pss_mb']:.0f} vs "
                            f"{b['pss_mb']:.0f} MiB)"),
    ]
    return {"rounds": rounds, "settle_s": SETTLE_S, "medians": med, "runs": runs, "summary": summary}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one round instead of three")
    ap.add_argument("--json", default=None, help="also write the whole result here")
    args = ap.parse_args()
    result = {"machine": common.machine_info(), **run(quick=args.quick)}
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    for row in result["summary"]:
        print(f"{row['figure']}: {row['measured']}  (goal {row['goal'] or '-'})")
    for v, rs in result["runs"].items():
        for r in rs:
            print(f"  {v}: {r['startup_s']:.2f} s, {r['rss_mb']:.0f} MiB RSS, {r['processes']} processes: "
                  + ", ".join(sorted({p['name'] for p in r['by_process']})))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
