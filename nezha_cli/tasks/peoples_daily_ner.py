"""People's Daily NER (also distributed as MSRA NER): character-level BIO tags for person (PER), location (LOC)
and organisation (ORG) names. Entity-level precision/recall/F1 as conlleval computes them.

Reads the TSV layout of the ERNIE / UER-py release (header ``text_a<TAB>label``, characters and tags
space-separated, one sentence per line) and the CoNLL layout (one ``char tag`` per line, a blank line between
sentences; e.g. ``example.train`` of the widely copied China People's Daily corpus).
"""

from __future__ import annotations

from nezha_cli.tasks.base import Hyperparameters
from nezha_cli.tasks.token_classification import TokenClassificationTask

PD_NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")


class PeoplesDailyNerTask(TokenClassificationTask):
    name = "pd-ner"
    aliases = ("peoples-daily-ner", "msra-ner")
    description = "People's Daily NER (character BIO, PER/LOC/ORG), entity-level precision/recall/F1"
    data_source = ("People's Daily NER (also MSRA NER) ships with the ERNIE and UER-py downloads as TSV (header "
                   "text_a<TAB>label, characters and BIO tags space-separated); `nezha corpus pd1998-ner` writes a "
                   "silver-labelled training set from the embedded People's Daily 1998.")
    defaults = Hyperparameters(learning_rate=3e-5, max_seq_length=256, epochs=5)
    label_list = PD_NER_LABELS
    split_files = {
        "train": ("train.tsv", "train.txt", "example.train"),
        "dev": ("dev.tsv", "dev.txt", "example.dev"),
        "test": ("test.tsv", "test.txt", "example.test"),
    }
