"""Where a study's time went: training vs everything else (start-up, evaluation of the driver, waiting).

`training_s` sums the trials' `wall_s` (the loop's own clock: training and evaluation, from its first step to its
last report); `trial_s` sums `fit_s` (what each trial cost, as the user waits for it: start-up included; start-up +
training for a trial stopped early, which logs no fit_s). With
`slots` trials at a time, a study that spent its time training would take about training_s / slots. The throughput
profile (tune/throughput.py) runs before the search, on the study's clock: it is reported apart (`profile_s`) and
left out of `study_over_ideal`, which compares the search's wall-clock with training_s / slots.
"""
from __future__ import annotations

from typing import Any


def study_costs(records: list[dict[str, Any]], study_s: float, slots: int, profile_s: float = 0.0
                ) -> dict[str, float]:
    def total(key: str) -> float:
        return float(sum(r.get(key) or 0.0 for r in records))

    def trial_time(r: dict[str, Any]) -> float:
        # a trial stopped early by the scheduler (asha, sha) ends without its fit_s: what it was seen to cost,
        # start-up and training, so that the share and the line stay true (start-up never exceeds trial time)
        if r.get("fit_s") is not None:
            return float(r["fit_s"])
        return float(r.get("startup_s") or 0.0) + float(r.get("wall_s") or 0.0)

    training, startup = total("wall_s"), total("startup_s")
    trial = float(sum(trial_time(r) for r in records))
    ideal = training / max(1, slots)
    return {"training_s": training, "trial_s": trial, "startup_s": startup,
            "training_share": training / trial if trial > 0 else 0.0,
            "profile_s": profile_s, "slots": slots,
            "study_over_ideal": max(study_s - profile_s, 0.0) / ideal if ideal > 0 else 0.0}


def costs_line(c: dict[str, float], study_s: float, command_s: float | None = None) -> str:
    """The study's time line; `command_s`: seconds since the command started, so Ray's start-up and the preflight
    (command_s - study_s) are shown too."""
    profile = f" (throughput profile {c['profile_s']:.0f} s)" if c.get("profile_s") else ""
    if command_s is not None and command_s >= study_s:
        profile += (f", {command_s:.0f} s since the command started (Ray start-up and checks "
                    f"{command_s - study_s:.0f} s)")
    return (f"[largebatch] study {study_s:.0f} s wall-clock{profile}; trials {c['trial_s']:.0f} s, of which training "
            f"{c['training_s']:.0f} s ({100 * c['training_share']:.0f}%) and start-up {c['startup_s']:.0f} s; "
            f"search wall-clock / (training / concurrent trials) = {c['study_over_ideal']:.2f}")
