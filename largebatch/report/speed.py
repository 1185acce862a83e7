"""The report's speed axis: projected training time from the isolated throughput profile, or measured wall-clock.

Trials share the machine, so a trial's wall-clock depends on what ran beside it. When the study has a throughput
profile (tune/throughput.py: each batch size's step time, measured alone before the search), a recipe's
speed is its projected training time, `steps x profiled step time` at its batch size; the measured wall-clock stays
beside it (`wall_s_mean`). The speed-up, the Pareto front and the recommendation follow `time_s`, which is the
projected time when every scored recipe (and the baseline) can be projected, else the measured wall-clock for all
of them (one basis per report, never a mix), with a warning saying why. docs/design.md §9.

Projected time is training steps only: evaluation, checkpoints and start-up are left out (evaluation costs the same
for every batch size at a fixed number of epochs).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional


def step_times(profile: Optional[dict]) -> dict[int, float]:
    """{global batch: profiled seconds per optimizer step} of a profile (tune/throughput.py); {} for none."""
    out: dict[int, float] = {}
    for e in (profile or {}).get("entries") or []:
        try:
            b, s = int(e["global_batch_size"]), float(e["step_s"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(s) and s > 0:
            out[b] = s
    return out


def projected(batch: int, steps: Optional[float], step_s: dict[int, float], batch_ramp: bool = False
              ) -> Optional[float]:
    """steps x the profiled step time of `batch`; None when the batch was not profiled, the step count is unknown,
    or the batch changes during the trial (schedule.batch_ramp: no single step time applies)."""
    if steps is None or batch_ramp or batch not in step_s:
        return None
    return float(steps) * step_s[batch]


def choose_basis(trials: Iterable[Any], step_s: dict[int, float], profile: Optional[dict],
                 warnings: list[str]) -> str:
    """'projected' when every scored trial can be projected, else 'measured' (with a warning if a profile exists
    but does not cover them). `trials` are report/build.py _Trial rows."""
    if not step_s:
        if profile and profile.get("status") == "off" and profile.get("reason"):
            warnings.append(f"no throughput profile ({profile['reason']}): speeds are measured wall-clock, taken "
                            "while trials shared the machine")
        return "measured"
    missing = sorted({f"B={t.batch}" + (" (batch ramp)" if t.batch_ramp else "") + ("" if t.steps is not None else
                                                                                     " (no step count)")
                      for t in trials if t.acc is not None and projected(t.batch, t.steps, step_s, t.batch_ramp)
                      is None})
    if missing:
        warnings.append(f"the throughput profile does not cover {', '.join(missing)}: speeds are measured "
                        "wall-clock for every recipe")
        return "measured"
    return "projected"


def speed_fields(batch: int, steps: list[int], walls: list[float], step_s: dict[int, float], basis: str,
                 batch_ramp: bool = False) -> dict[str, Optional[float]]:
    """A recipe's projected_s (mean over its timed trials) and time_s, its speed on the report's basis."""
    proj = [p for s in steps if (p := projected(batch, s, step_s, batch_ramp)) is not None]
    projected_s = sum(proj) / len(proj) if proj and len(proj) == len(steps) else None
    wall = sum(walls) / len(walls) if walls else None
    return {"projected_s": projected_s, "time_s": projected_s if basis == "projected" else wall}


def profile_workers(profile: Optional[dict]) -> int:
    """The workers per trial a profile was measured with (its entries' `workers`, tune/group.py; 1 without)."""
    workers = {e.get("workers") for e in (profile or {}).get("entries") or [] if isinstance(e, dict)}
    counts = {c for c in workers if isinstance(c, int) and c > 0}
    return max(counts) if counts else 1


def basis_note(report: dict) -> str:
    """The footnote that says what the speed columns are."""
    prof = report.get("throughput") or {}
    if report.get("speed_basis") == "projected":
        where = f" on {prof['machine'].get('hostname')}" if isinstance(prof.get("machine"), dict) else ""
        n = profile_workers(prof)
        group = f" on one group of {n} workers, DDP's gradient all-reduce included," if n > 1 else ""
        return ("speed: projected training time = steps x the step time of each batch size measured alone"
                f"{group} before the search (throughput profile{where}, {prof.get('status', 'measured')}); the "
                "speed-up, the Pareto front and the recommendation use it; 'wall-clock s' is the training time "
                "measured while trials shared the machine")
    return "speed: training wall-clock, measured while trials shared the machine"


INPUT_NOTE_SHARE = 0.25  # an input pipeline at least this share of some batch size's step is worth a line


def input_note(profile: Optional[dict]) -> Optional[str]:
    """'the step times include the input pipeline: 67% of the step at B=1024, ...' for the batch sizes where
    producing the batches (entry `input_share`) takes at least INPUT_NOTE_SHARE of the step; None otherwise."""
    big = [e for e in (profile or {}).get("entries") or []
           if isinstance(e.get("input_share"), (int, float)) and e["input_share"] >= INPUT_NOTE_SHARE]
    if not big:
        return None
    cells = ", ".join(f"{100 * e['input_share']:.0f}% at B={e['global_batch_size']}" for e in big)
    data = ((profile or {}).get("fingerprint") or {}).get("data") or {}
    per_item = data.get("kind") == "dataset" and not any(data.get("getitems") or ())
    return (f"the step times include the input pipeline, which takes {cells} of the step" +
            (" (its Dataset is read item by item: give it __getitems__, or use tensors)" if per_item else ""))
