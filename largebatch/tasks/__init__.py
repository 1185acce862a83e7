"""Tasks: the workload a study tunes (model, data, loss, metrics). See docs/tasks.md."""
from largebatch.tasks.api import TASKS, Metric, Split, Task, TaskData, load_task, task_of
from largebatch.tasks.build import build_data, cached_data, check_split, train_size
from largebatch.tasks import classification as _classification  # noqa: F401  (registers `classification`)
from largebatch.tasks import charlm as _charlm  # noqa: F401  (registers `charlm`)

__all__ = ["TASKS", "Metric", "Split", "Task", "TaskData", "load_task", "task_of", "build_data", "cached_data",
           "check_split", "train_size"]
