"""CMRC 2018: span-extraction reading comprehension on Chinese Wikipedia, scored by the official CMRC 2018 script's
EM and F1 (see :mod:`nezha_cli.tasks.metrics`). Files are SQuAD v1.1-style JSON: ``train.json``, ``dev.json`` and
the public ``trial.json`` (used as the test split; the real test set is hidden)."""

from __future__ import annotations

from nezha_cli.tasks.base import Hyperparameters
from nezha_cli.tasks.question_answering import QuestionAnsweringTask


class Cmrc2018Task(QuestionAnsweringTask):
    name = "cmrc"
    data_source = ("CMRC 2018 (Cui et al., EMNLP 2019) is public in the ymcui/cmrc2018 repository on GitHub "
                   "(squad-style-data/: cmrc2018_train.json, cmrc2018_dev.json, cmrc2018_trial.json), SQuAD v1.1-style "
                   "JSON.")
    aliases = ("cmrc2018",)
    description = "CMRC 2018 span extraction (SQuAD-style JSON), official EM/F1"
    defaults = Hyperparameters(learning_rate=3e-5, max_seq_length=384, epochs=2)
    split_files = {
        "train": ("train.json", "cmrc2018_train.json"),
        "dev": ("dev.json", "cmrc2018_dev.json"),
        "test": ("test.json", "trial.json", "cmrc2018_trial.json"),
    }
