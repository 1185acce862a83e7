"""Search domains: one `search:` entry (`{grid: [..]}`, `{choice: [..]}`, `{uniform: [lo, hi]}`,
`{loguniform: [lo, hi]}`, `{randint: [lo, hi]}`, `{around_critical: [factors]}`) as a SearchDomain, the one place
that knows the kinds. around_critical (config/critical.py) is placed before the search: tune/critical.py replaces it
with the grid it gives, so the searchers never see it.

`per_batch: N` beside a sampled range (`optim.base_lr: {loguniform: [0.01, 3], per_batch: 6}`) re-tunes that setting
at every batch size: the grid searcher draws N values for each combination of the other entries, seeded by the
study seed and the batch size, so every rule and warmup at one batch size gets the same draws (Shallue et al. 2018
re-tune the LR per batch size; the report compares the tuned LR with what each rule predicts).

Its values() feed the grid searcher and the load-time resolve check, sample() the random searcher, to_tune() Ray
Tune's search space (optuna). The study keeps the entries as the YAML wrote them (dicts): they are logged as is.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional

from largebatch.config.critical import AROUND_CRITICAL, check_factors
from largebatch.config.resolve import resolve
from largebatch.config.schema import StudyConfig, TrialConfig
from largebatch.config.tree import flatten, get_dotted, parse_trial, set_dotted
from largebatch.errors import BadInput, did_you_mean
from largebatch.redact import reveal_credentials

SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", AROUND_CRITICAL)
PER_BATCH = "per_batch"
MAX_PER_BATCH = 100
LISTED_KINDS = ("grid", "choice")  # the values are listed; the others are ranges [low, high]


@dataclass(frozen=True)
class SearchDomain:
    kind: str
    args: list  # the listed values (grid, choice) or [low, high] (uniform, loguniform, randint)
    per_batch: Optional[int] = None  # draws per batch size (grid searcher), for a sampled range

    @classmethod
    def of(cls, entry: dict[str, Any]) -> "SearchDomain":
        """The domain of an entry already checked by parse() (load_study did)."""
        kind, args = next((k, v) for k, v in entry.items() if k != PER_BATCH)
        return cls(kind, args, entry.get(PER_BATCH))

    @classmethod
    def parse(cls, entry: dict[str, Any], source: str = "<study>", field: str = "search") -> "SearchDomain":
        """Check an entry's shape: one known kind; a non-empty list; ranges [low, high] with low < high; per_batch
        an int in 1..MAX_PER_BATCH beside a range."""
        if PER_BATCH in entry and isinstance(entry, dict):
            rest = {k: v for k, v in entry.items() if k != PER_BATCH}
            n = entry[PER_BATCH]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PER_BATCH:
                raise BadInput(f"per_batch must be a whole number of draws per batch size, 1 to {MAX_PER_BATCH}; got "
                               f"{n!r}", source=source, field=field)
            domain = cls.parse(rest, source, field)
            if domain.listed or domain.kind == AROUND_CRITICAL:
                raise BadInput(f"per_batch goes with a sampled range (uniform, loguniform, randint), not {domain.kind}",
                               source=source, field=field)
            if field == "search.data.global_batch_size":
                raise BadInput("per_batch re-tunes another setting at each batch size; the batch itself cannot have "
                               "it", source=source, field=field)
            return cls(domain.kind, domain.args, n)
        if len(entry) != 1 or next(iter(entry)) not in SEARCH_KINDS:
            raise BadInput(f"got {entry!r}; a search entry is one of {{grid: [..]}}, {{choice: [..]}}, "
                           f"{{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}, {{randint: [lo, hi]}}",
                           source=source, field=field)
        kind, values = next(iter(entry.items()))
        if kind == AROUND_CRITICAL:
            return cls(kind, check_factors(field.removeprefix("search."), values, source, field))
        if not isinstance(values, list) or not values:
            raise BadInput(f"{kind} needs a non-empty list, got {values!r}", source=source, field=field)
        if kind not in LISTED_KINDS:
            if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
                raise BadInput(f"{kind} needs [low, high] with low < high, got {values!r}", source=source,
                               field=field)
            if kind == "loguniform" and values[0] <= 0:
                raise BadInput(f"loguniform needs low > 0, got {values[0]}", source=source, field=field)
        return cls(kind, values)

    @property
    def listed(self) -> bool:
        return self.kind in LISTED_KINDS

    def values(self) -> list[Any]:
        """The values a grid/choice entry can take; [] for sampled ranges (checked by their bounds at load time)."""
        return list(self.args) if self.listed else []

    def probes(self) -> list[Any]:
        """The values checked against the trial config at load time: every listed value; a range's bounds as the
        type it draws (uniform/loguniform draw floats, so an int setting such as a batch size fails at load)."""
        if self.listed:
            return list(self.args)
        if self.kind == AROUND_CRITICAL:  # the batches are known once B_noise is measured (tune/critical.py)
            return []
        if self.kind == "randint":
            return [int(self.args[0])]
        return [float(self.args[0]), float(self.args[1])]

    def sample(self, rng: random.Random) -> Any:
        """One draw (the random searcher): seeded by `rng`, one rng call per draw."""
        v = self.args
        self._placed()
        if self.listed:
            return rng.choice(v)
        if self.kind == "uniform":
            return rng.uniform(*v)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(v[0]), math.log(v[1])))
        return rng.randrange(int(v[0]), int(v[1]))

    def stratified(self, rng: random.Random, n: int) -> list[Any]:
        """n draws of a range, one in each of n equal strata (of log-space for loguniform), in increasing order:
        a few draws still cover the range (per_batch). randint draws may repeat when the range is narrow."""
        lo, hi = float(self.args[0]), float(self.args[1])
        if self.kind == "loguniform":
            lo, hi = math.log(lo), math.log(hi)
        u = [lo + (hi - lo) * (i + rng.random()) / n for i in range(n)]
        if self.kind == "loguniform":
            return [math.exp(x) for x in u]
        if self.kind == "randint":
            return [min(int(x), int(self.args[1]) - 1) for x in u]
        return u

    def to_tune(self):
        """The Ray Tune domain (imports ray: call it on the driver only)."""
        from ray import tune

        self._placed()
        if self.listed:
            return tune.choice(self.args)
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        return tune.randint(int(self.args[0]), int(self.args[1]))


    def _placed(self) -> None:
        if self.kind == AROUND_CRITICAL:
            raise RuntimeError("around_critical must be placed (tune/critical.py place_critical) before the search")


_MISSING = object()


def check_search_key(study: StudyConfig, key: str, entry: dict[str, Any], source: str) -> SearchDomain:
    """The entry is a valid domain, `key` a trial setting, and every value it can take makes a valid trial config."""
    field = f"search.{key}"
    domain = SearchDomain.parse(entry, source, field)
    base = study.base.model_dump()
    if get_dotted(base, key, _MISSING) is _MISSING:
        top = key.split(".")[0]
        valid = list(TrialConfig.model_fields)
        hint = did_you_mean(key, flatten(base).keys()) or did_you_mean(top, valid)
        raise BadInput(f"no such trial setting{hint}; search keys are dotted paths into base, e.g. "
                       f"data.global_batch_size", source=source, field=field)
    for v in domain.probes():  # every grid/choice value must make a valid trial config
        try:
            parse_trial(set_dotted(base, key, v), source="", prefix="")
        except BadInput as e:
            raise BadInput(f"{domain.kind} value {v!r}: {e}", source=source, field=field) from None
    return domain


def search_values(entry: dict[str, Any]) -> list[Any]:
    """The values a grid/choice entry can take; [] for sampled ranges (checked by their bounds at load time)."""
    return SearchDomain.of(entry).values()


def check_search_resolves(study: StudyConfig, num_workers: int, source: str = "<study>") -> None:
    """Resolve base with every grid/choice value, so a batch that does not divide over the workers or exceeds the
    dataset is an error before any trial starts (docs/design.md §10), not a failed trial mid-study."""
    base = study.base.model_dump()
    secrets = study.credentials()  # a searched credential is a reference after load: resolve the real value
    for key, entry in study.search.items():
        domain = SearchDomain.of(entry)
        for v in domain.values():
            # load_study already parsed it
            cfg = TrialConfig.model_validate(set_dotted(base, key, reveal_credentials(v, secrets)))
            if key in ("optim.name", "optim") and _full_batch_only(cfg.optim.name):
                # the grid runs it at the full batch only (config/fullbatch.py grid_admits)
                cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"global_batch_size": "full"})})
            try:
                resolve(cfg, num_workers, source="", prefix="")
            except BadInput as e:
                raise BadInput(f"{domain.kind} value {v!r}: {e}", source=source, field=f"search.{key}") from None


def _full_batch_only(name: str) -> bool:
    from largebatch.optim import OPTIMIZERS

    return name in OPTIMIZERS and OPTIMIZERS.get(name).full_batch_only
