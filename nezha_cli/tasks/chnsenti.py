"""ChnSentiCorp: sentiment of a hotel/book/product review, 1 positive or 0 negative. Accuracy.

Files are TSV with the header ``label<TAB>text_a`` (the ERNIE / UER-py release); a headerless file is read in that
column order.
"""

from __future__ import annotations

from nezha_cli.tasks.base import Hyperparameters
from nezha_cli.tasks.sequence_classification import SequenceClassificationTask


class ChnSentiTask(SequenceClassificationTask):
    name = "chnsenti"
    data_source = ("ChnSentiCorp (Tan Songbo's review corpus) ships with the ERNIE and UER-py downloads as TSV "
                   "files with the header label<TAB>text_a.")
    aliases = ("chnsenticorp",)
    description = "ChnSentiCorp sentiment (single sentence, labels 0/1), accuracy"
    defaults = Hyperparameters(learning_rate=3e-5, max_seq_length=256, epochs=10)
    label_list = ("0", "1")
    headerless_columns = ("label", "text_a")
