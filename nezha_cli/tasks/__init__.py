"""Fine-tuning tasks: the paper's five (cmrc, xnli, lcqmc, pd-ner, chnsenti) and generic ones, each with its
reader, features, post-processing, official metric and the paper's fine-tuning hyperparameters."""

from nezha_cli.tasks.base import Hyperparameters, Task
from nezha_cli.tasks.registry import ALIASES, TASKS, get_task, get_task_class, task_names

__all__ = ["ALIASES", "TASKS", "Hyperparameters", "Task", "get_task", "get_task_class", "task_names"]
