"""LCQMC: does a pair of Chinese questions ask the same thing (1) or not (0)? Accuracy.

Files are ``text_a<TAB>text_b<TAB>label`` lines, with or without that header line (both layouts are public).
"""

from __future__ import annotations

from nezha_cli.tasks.base import Hyperparameters
from nezha_cli.tasks.sequence_classification import SequenceClassificationTask


class LcqmcTask(SequenceClassificationTask):
    name = "lcqmc"
    description = "LCQMC question matching (sentence pairs, labels 0/1), accuracy"
    data_source = ("LCQMC (Liu et al., COLING 2018) is handed out by its authors at Harbin Institute of Technology "
                   "(Shenzhen) and ships with the ERNIE and CLUE benchmark downloads; its files are "
                   "text_a<TAB>text_b<TAB>label lines.")
    defaults = Hyperparameters(learning_rate=3e-5, max_seq_length=128, epochs=5)
    label_list = ("0", "1")
    headerless_columns = ("text_a", "text_b", "label")
    pair = True
