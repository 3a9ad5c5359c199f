"""XNLI (Chinese): does the premise entail, contradict or say nothing about (neutral) the hypothesis? Accuracy.

Reads the common TSV layouts: a header naming the columns (``premise/hypo/label`` of XNLI-MT's
``multinli.train.zh.tsv``, ``sentence1/sentence2/gold_label`` plus ``language`` of ``xnli.dev.tsv`` and
``xnli.test.tsv``, whose non-Chinese rows are skipped, or ``text_a/text_b/label``), or headerless
``text_a<TAB>text_b<TAB>label``. Labels are the names below, ``contradictory`` (XNLI-MT's spelling) or their ids
0/1/2 in this order.
"""

from __future__ import annotations

from nezha_cli.tasks.base import Hyperparameters
from nezha_cli.tasks.readers import Columns
from nezha_cli.tasks.sequence_classification import SequenceClassificationTask

XNLI_LABELS = ("contradiction", "entailment", "neutral")


class XnliTask(SequenceClassificationTask):
    name = "xnli"
    description = "XNLI Chinese natural language inference (contradiction/entailment/neutral), accuracy"
    data_source = ("XNLI (Conneau et al., EMNLP 2018) is the public XNLI-1.0 release (xnli.dev.tsv, xnli.test.tsv) "
                   "with the machine-translated training set of XNLI-MT-1.0 (multinli.train.zh.tsv); a header row "
                   "names the columns (premise/hypo/label or sentence1/sentence2/gold_label).")
    defaults = Hyperparameters(learning_rate=3e-5, max_seq_length=128, epochs=3)
    label_list = XNLI_LABELS
    headerless_columns = ("text_a", "text_b", "label")
    pair = True
    split_files = {
        "train": ("train.tsv", "multinli.train.zh.tsv"),
        "dev": ("dev.tsv", "xnli.dev.tsv"),
        "test": ("test.tsv", "xnli.test.tsv"),
    }

    def normalize_label(self, label: str) -> str:
        label = label.strip().lower()
        if label == "contradictory":
            return "contradiction"
        if label in ("0", "1", "2"):
            return XNLI_LABELS[int(label)]
        return label

    def keep_row(self, columns: Columns, fields: list[str]) -> bool:
        language = columns.find(("language",), "language", required=False)
        return language is None or fields[language].strip() == "zh"
