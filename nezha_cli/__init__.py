"""nezha-cli: a corpus-to-model toolchain for NEZHA (arXiv 1909.00204).

Every command is a library call; the functions the commands call are importable from here, each imported on first
use (so that ``import nezha_cli`` stays light)::

    from nezha_cli import tokenize_corpus, create_pretraining_data, pretrain, finetune, evaluate_model
    from nezha_cli import export_model, import_checkpoint, render_report, load_recipe, get_task
"""

import importlib

__version__ = "0.1.0"

# name -> module: the stage that is the single home of each call (`nezha COMMAND` in the comment).
_API = {
    "tokenize_corpus": "nezha_cli.text.pipeline",  # nezha tokenize
    "create_pretraining_data": "nezha_cli.pretraining.instances",  # nezha mask
    "load_recipe": "nezha_cli.pretraining.recipes",  # nezha recipes
    "pretrain": "nezha_cli.pretraining.run",  # nezha pretrain
    "get_task": "nezha_cli.tasks",
    "finetune": "nezha_cli.tasks.finetune",  # nezha finetune
    "evaluate_model": "nezha_cli.tasks.evaluate",  # nezha evaluate
    "export_model": "nezha_cli.interchange",  # nezha export
    "import_checkpoint": "nezha_cli.interchange",  # nezha import
    "render_report": "nezha_cli.engine.report",  # nezha report
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nezha_cli' has no attribute {name!r}")
