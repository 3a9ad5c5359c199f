"""The task registry: task names as users type them (and their aliases) -> task classes."""

from __future__ import annotations

from typing import Any

from nezha_cli.errors import ConfigError
from nezha_cli.tasks.base import Task
from nezha_cli.tasks.chnsenti import ChnSentiTask
from nezha_cli.tasks.cmrc2018 import Cmrc2018Task
from nezha_cli.tasks.generic import (
    GenericClassificationTask,
    GenericMultipleChoiceTask,
    GenericNerTask,
    GenericPairClassificationTask,
    GenericQuestionAnsweringTask,
)
from nezha_cli.tasks.lcqmc import LcqmcTask
from nezha_cli.tasks.peoples_daily_ner import PeoplesDailyNerTask
from nezha_cli.tasks.xnli import XnliTask

# The paper's five tasks first (Table 4 order), then the generic ones.
TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        Cmrc2018Task, XnliTask, LcqmcTask, PeoplesDailyNerTask, ChnSentiTask,
        GenericClassificationTask, GenericPairClassificationTask, GenericNerTask, GenericQuestionAnsweringTask,
        GenericMultipleChoiceTask,
    )
}
ALIASES: dict[str, str] = {alias: cls.name for cls in TASKS.values() for alias in cls.aliases}


def task_names(with_aliases: bool = True) -> list[str]:
    return list(TASKS) + (sorted(ALIASES) if with_aliases else [])


def get_task_class(name: str) -> type[Task]:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")
    return TASKS[key]


def get_task(name: str, **options: Any) -> Task:
    """A task instance; ``options`` are the column options of the generic tasks (None values are ignored)."""
    cls = get_task_class(name)
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return cls(**options)
    except TypeError:
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "options")]
        given = ", ".join("--" + k.replace("_", "-") for k in options)
        hint = (f"it accepts {', '.join('--' + p.replace('_', '-') for p in accepted)}" if accepted
                else "its file layout is fixed")
        raise ConfigError(f"task {cls.name} does not take {given}; {hint}") from None
