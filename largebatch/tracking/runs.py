"""A study's run tree in MLflow, named once: the tags that place a run in it, the search filters that find its runs,
and `RunTree`, the read side (the parent run of a study invocation, the trial runs under it, by trial id or index,
and their statuses). `Tracker` (tracker.py) is a RunTree that also writes.

One experiment per study; per invocation one parent run tagged kind=study and run_name=<its Tune run folder>; per
trial one child run (tags.mlflow.parentRunId = the parent) tagged kind=trial, its Tune trial id, trial folder and
number, and its status (vocab.Status: the `status` tag, `running` until it ends).
"""
from __future__ import annotations

from typing import Any, Optional

from largebatch.tracking.client import _client

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the run a child run hangs under
TRIAL_TAG = "largebatch.trial_id"
TRIAL_DIR_TAG = "largebatch.trial_dir"  # the Tune trial folder's name
# "<Tune run folder>:<n>": the trial's number in that Tune run (tune/space.py WithBaseline); a resumed study keeps
# the folder, an extension (tune/extend.py) gets a new one
TRIAL_INDEX_TAG = "largebatch.trial_index"
KIND_TAG = "largebatch.kind"  # study | trial
STATUS_TAG = "status"
REASON_TAG = "reason"  # why a run failed or stopped, one line
RUN_NAME_TAG = "run_name"  # a study run's Tune run folder `<name>-<YYYYmmdd-HHMMSS>` (tune/study_runs.py)
NOTE_TAG = "mlflow.note.content"  # the run's description: MLflow shows it on the run page (Markdown)
NOTE_MAX = 5000
STUDY_FILTER = f"tags.`{KIND_TAG}` = 'study'"


def children_filter(parent_id: str) -> str:
    """Every child run of parent run `parent_id`."""
    return f"tags.{PARENT_TAG} = '{parent_id}'"


def child_filter(parent_id: str, tag: str, value: str) -> str:
    """The child run of `parent_id` whose tag `tag` is `value` (its trial id, its trial number)."""
    return children_filter(parent_id) + f" and tags.`{tag}` = '{value}'"


def study_named_filter(run_name: str) -> str:
    """The study run of Tune run folder `run_name`."""
    return f"tags.{RUN_NAME_TAG} = '{run_name}' and " + STUDY_FILTER


class RunTree:
    """The read side of a store's run trees. Calls go to MLflow once (a Tracker retries with `call`)."""

    def __init__(self, uri: str, create: bool = False):
        self.uri = uri
        self.client = _client(uri, create=create)  # create: only a study's Tracker makes an SQLite store

    def experiment(self, name: str) -> Any:
        """The experiment named `name`, or None."""
        return self.client.get_experiment_by_name(name)

    def experiments(self, max_results: Optional[int] = None) -> list:
        if max_results is None:
            return self.client.search_experiments()
        return self.client.search_experiments(max_results=max_results)

    def run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)

    def children(self, experiment_id: str, parent_id: str) -> list:
        """The child runs (trials) of a study's parent run."""
        return self.client.search_runs([experiment_id], filter_string=children_filter(parent_id), max_results=5000)

    def child_with_tag(self, experiment_id: str, parent_id: str, tag: str, value: str) -> Optional[str]:
        """The id of the child run of `parent_id` whose `tag` is `value` (TRIAL_TAG, TRIAL_INDEX_TAG), or None."""
        runs = self.client.search_runs([experiment_id], filter_string=child_filter(parent_id, tag, value),
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def latest_study(self, experiment_ids: list[str]) -> list:
        """[the most recently started study run in these experiments] or []."""
        return self.client.search_runs(experiment_ids, filter_string=STUDY_FILTER,
                                       order_by=["attributes.start_time DESC"], max_results=1)

    def study_named(self, experiment_id: str, run_name: str) -> list:
        """[the study run of Tune run folder `run_name`] or []."""
        return self.client.search_runs([experiment_id], filter_string=study_named_filter(run_name), max_results=1)

    def metric_history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)

    def download_artifact(self, run_id: str, path: str, dst_path: str) -> str:
        return self.client.download_artifacts(run_id, path, dst_path)
