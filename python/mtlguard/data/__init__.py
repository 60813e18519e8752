"""Multi-task datasets and their task specifications."""
from .tasks import (
    CLASSIFICATION_KINDS,
    DENSE_KINDS,
    KINDS,
    TaskSpec,
    select_tasks,
    tasks_from_json,
    tasks_to_json,
    validate_tasks,
)

__all__ = [
    "TaskSpec", "KINDS", "CLASSIFICATION_KINDS", "DENSE_KINDS",
    "validate_tasks", "select_tasks", "tasks_to_json", "tasks_from_json",
]
