"""The one typed, strict config, and `resolve()`: the ONE place derived values are computed.

A study YAML has blocks `base:` (a TrialConfig), `search:` (dotted keys -> domains), `tuner:`, `baseline:`
(dotted overrides of base) and `report:`. Dicts exist only at the YAML and Ray boundaries; everything else reads
attributes. Unknown keys, wrong types and impossible values are `BadInput` naming the file and dotted path.

The package, one job a module (each imports only those above it):
  schema.py   the pydantic models (TrialConfig, StudyConfig, ...) and the study-name rule
  names.py    registry names checked at load time (the registries are imported lazily)
  tree.py     dotted keys, pydantic errors -> BadInput, parse_trial
  resolve.py  Phase, Resolved, resolve(): every derived value for one worker count
  critical.py around_critical: its factors' checks and the batch rounding (pure; placed by tune/critical.py)
  search.py   SearchDomain: the `search:` entries (values, sample, to_tune) and their load-time checks
  fullbatch.py `full` made the training-set size at load; full_batch_only optimizers (rprop) checked
  study.py    load_study: YAML, --set overrides, smoke, baseline, the task check

Everything is importable from `largebatch.config`; importing it loads no torch, ray or mlflow.
"""
from largebatch.config.schema import (
    MAX_EPOCHS, STUDY_NAME, BatchRampConfig, BudgetConfig, CheckpointConfig, DataConfig, InstrumentsConfig,
    ModelConfig, OptimConfig, ReportConfig, ScalingConfig, ScheduleConfig, SmokeConfig, StudyConfig, TaskConfig,
    TrialConfig, TunerConfig, check_study_name,
)
from largebatch.config.names import check_names
from largebatch.config.tree import apply_overrides, flatten, get_dotted, parse_trial, set_dotted
from largebatch.config.resolve import Phase, Resolved, resolve
from largebatch.config.search import (
    LISTED_KINDS, SEARCH_KINDS, SearchDomain, check_search_key, check_search_resolves, search_values,
)
from largebatch.config.fullbatch import full_batch_study, grid_admits
from largebatch.config.study import (
    baseline_trial, check_task, load_study, load_yaml_text, parse_sets, parse_value, read_yaml,
)

__all__ = [
    "MAX_EPOCHS", "STUDY_NAME", "BatchRampConfig", "BudgetConfig", "CheckpointConfig", "DataConfig",
    "InstrumentsConfig", "ModelConfig", "OptimConfig", "ReportConfig", "ScalingConfig", "ScheduleConfig",
    "SmokeConfig", "StudyConfig", "TaskConfig", "TrialConfig", "TunerConfig", "check_study_name", "check_names",
    "apply_overrides", "flatten", "get_dotted", "parse_trial", "set_dotted", "Phase", "Resolved", "resolve",
    "LISTED_KINDS", "SEARCH_KINDS", "SearchDomain", "check_search_key", "check_search_resolves", "search_values",
    "full_batch_study", "grid_admits", "baseline_trial", "check_task", "load_study", "load_yaml_text", "parse_sets",
    "parse_value", "read_yaml",
]
