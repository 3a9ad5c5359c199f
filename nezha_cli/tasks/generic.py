"""Generic tasks for the user's own data: ``classification``, ``pair-classification``, ``ner``, ``qa`` and
``multiple-choice``, read from CSV/TSV/JSON/JSONL (through ``datasets``) with configurable column names.

Label sets are learned from the training file and stored in the fine-tuned model's config (``id2label``), which
is where ``nezha evaluate`` takes them from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nezha_cli.errors import DataError
from nezha_cli.tasks.base import (
    ClassificationExample,
    Hyperparameters,
    MultipleChoiceExample,
    check_not_empty,
)
from nezha_cli.tasks.multiple_choice import MultipleChoiceTask
from nezha_cli.tasks.question_answering import AnswerCheck, QuestionAnsweringTask, make_example, parse_squad
from nezha_cli.tasks.readers import check_label, load_table, looks_like_conll, read_conll, require_column
from nezha_cli.tasks.sequence_classification import SequenceClassificationTask
from nezha_cli.tasks.token_classification import TokenClassificationTask

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


def _split_names(*stems: str) -> tuple[str, ...]:
    return tuple(f"{stem}{suffix}" for stem in stems for suffix in TABLE_SUFFIXES)


GENERIC_SPLIT_FILES = {
    "train": _split_names("train"),
    "dev": _split_names("dev", "validation", "valid", "val"),
    "test": _split_names("test"),
}


def _column(value: str | None, columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The user's column name, or the first candidate present in the file."""
    if value is not None:
        return value
    return next((c for c in candidates if c in columns), candidates[0])


def _guid(row: dict[str, Any], id_column: str | None, path: Path, index: int) -> str:
    if id_column and id_column in row and row[id_column] is not None:
        return str(row[id_column])
    return f"{path.stem}-{index}"


class GenericClassificationTask(SequenceClassificationTask):
    name = "classification"
    description = "your single-text classification data (CSV/TSV/JSON/JSONL), accuracy"
    defaults = Hyperparameters(max_seq_length=128, epochs=3)
    split_files = GENERIC_SPLIT_FILES
    label_list = None
    pair = False

    def __init__(self, text_column: str | None = None, text_pair_column: str | None = None,
                 label_column: str | None = None, id_column: str | None = None) -> None:
        if text_pair_column is not None and not self.pair:
            raise DataError("--text-pair-column is for pair-classification; use that task for sentence pairs")
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.id_column = id_column

    def read(self, path: Path, labels: Sequence[str] | None = None, require_labels: bool = True) -> list:
        path = Path(path)
        columns, rows = load_table(path)
        text = _column(self.text_column, columns, ("text", "sentence", "text_a", "sentence1"))
        require_column(path, columns, text, "--text-column")
        pair = None
        if self.pair:
            pair = _column(self.text_pair_column, columns, ("text_pair", "text_b", "sentence2"))
            require_column(path, columns, pair, "--text-pair-column")
        label = _column(self.label_column, columns, ("label", "labels"))
        has_labels = label in columns
        if require_labels:
            require_column(path, columns, label, "--label-column")
        id_column = _column(self.id_column, columns, ("id", "idx", "guid"))
        examples = []
        for index, row in enumerate(rows):
            value = row.get(label) if has_labels else None
            if value is not None and value != "":
                value = str(value)
                if labels is not None:
                    check_label(path, f"row {index + 1}", value, labels)
            elif require_labels:
                raise DataError(f"{path}: row {index + 1} has no {label!r}")
            else:
                value = None
            examples.append(ClassificationExample(
                guid=_guid(row, id_column, path, index), text_a=_text(row[text], path, index, text),
                text_b=_text(row[pair], path, index, pair) if pair else None, label=value,
            ))
        check_not_empty(examples, path)
        return examples


def _text(value: Any, path: Path, index: int, column: str) -> str:
    if value is None:
        raise DataError(f"{path}: row {index + 1}: column {column!r} is empty")
    return str(value)


class GenericPairClassificationTask(GenericClassificationTask):
    name = "pair-classification"
    description = "your sentence-pair classification data (CSV/TSV/JSON/JSONL), accuracy"
    pair = True


class GenericNerTask(TokenClassificationTask):
    name = "ner"
    description = "your token tagging data (CoNLL, or CSV/TSV/JSON/JSONL columns), entity-level F1"
    defaults = Hyperparameters(max_seq_length=256, epochs=5)
    split_files = {split: names + tuple(f"{split}.{s}" for s in ("conll", "bio", "txt"))
                   for split, names in GENERIC_SPLIT_FILES.items()}
    label_list = None

    def __init__(self, tokens_column: str | None = None, tags_column: str | None = None,
                 id_column: str | None = None) -> None:
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.id_column = id_column

    def read_sentences(self, path: Path, require_labels: bool) -> list[tuple]:
        """(line, tokens, tags) per CoNLL sentence; (row, tokens, tags, id) per table row (rows without tokens are
        left out, the others keep their id or row number)."""
        path = Path(path)
        if path.suffix.lower() not in TABLE_SUFFIXES or (path.suffix.lower() == ".tsv" and looks_like_conll(path)):
            if not looks_like_conll(path):
                raise DataError(f"{path}: not in the CoNLL layout ('token tag' per line, blank line between "
                                "sentences); use .csv/.tsv/.json/.jsonl for column data")
            return read_conll(path)
        columns, rows = load_table(path)
        tokens_column = _column(self.tokens_column, columns, ("tokens", "text_a", "text", "chars"))
        require_column(path, columns, tokens_column, "--tokens-column")
        tags_column = _column(self.tags_column, columns, ("ner_tags", "tags", "label", "labels"))
        if require_labels:
            require_column(path, columns, tags_column, "--tags-column")
        id_column = _column(self.id_column, columns, ("id", "idx", "guid"))
        sentences = []
        for index, row in enumerate(rows):
            tokens = [str(t) for t in _as_list(row[tokens_column], path, index, tokens_column)]
            tags = _as_list(row[tags_column], path, index, tags_column) if tags_column in columns else None
            if tags is not None:
                if any(not isinstance(t, str) for t in tags):
                    raise DataError(f"{path}: row {index + 1}: tags must be names such as B-PER, not ids; "
                                    "write the tag names into the file")
                if len(tags) != len(tokens):
                    raise DataError(f"{path}: row {index + 1}: {len(tokens)} tokens but {len(tags)} tags")
            if tokens:
                sentences.append((f"row {index + 1}", tokens, tags, _guid(row, id_column, path, index)))
        return sentences


def _as_list(value: Any, path: Path, index: int, column: str) -> list:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return list(value)
    raise DataError(f"{path}: row {index + 1}: column {column!r} must be a list or a space-separated string")


class GenericQuestionAnsweringTask(QuestionAnsweringTask):
    name = "qa"
    description = "your span-extraction QA data (SQuAD-style JSON or flat JSON/JSONL rows), CMRC 2018 EM/F1"
    defaults = Hyperparameters(max_seq_length=384, epochs=2)
    split_files = {"train": ("train.json", "train.jsonl"), "dev": ("dev.json", "validation.json", "dev.jsonl",
                                                                   "validation.jsonl"),
                   "test": ("test.json", "test.jsonl")}

    def __init__(self, question_column: str | None = None, context_column: str | None = None,
                 answers_column: str | None = None, id_column: str | None = None) -> None:
        self.question_column = question_column or "question"
        self.context_column = context_column or "context"
        self.answers_column = answers_column or "answers"
        self.id_column = id_column or "id"

    def read_examples(self, path: Path, require_answers: bool):
        check = AnswerCheck()
        if path.suffix.lower() == ".json":
            from nezha_cli.io import read_json

            data = read_json(path, what="QA JSON")
            if isinstance(data, dict) and "data" in data:
                return parse_squad(data, path, check, require_answers), check
        columns, rows = load_table(path)
        for name, option in ((self.question_column, "--question-column"), (self.context_column, "--context-column")):
            require_column(path, columns, name, option)
        if require_answers:
            require_column(path, columns, self.answers_column, "--answers-column")
        examples = []
        for index, row in enumerate(rows):
            answers = row.get(self.answers_column) or {}
            # HF's flat SQuAD layout: answers = {"text": [...], "answer_start": [...]}.
            if isinstance(answers, dict):
                answers = [{"text": t, "answer_start": s}
                           for t, s in zip(answers.get("text") or [], answers.get("answer_start") or [])]
            examples.append(make_example(_guid(row, self.id_column, path, index), row[self.question_column],
                                         row[self.context_column], answers, path, check, require_answers))
        check_not_empty(examples, path)
        return examples, check


class GenericMultipleChoiceTask(MultipleChoiceTask):
    name = "multiple-choice"
    description = "your multiple-choice data (CSV/TSV/JSON/JSONL), accuracy"
    defaults = Hyperparameters(max_seq_length=128, epochs=3, batch_size=16)
    split_files = GENERIC_SPLIT_FILES

    def __init__(self, context_column: str | None = None, question_column: str | None = None,
                 choices_column: str | None = None, label_column: str | None = None,
                 id_column: str | None = None) -> None:
        self.context_column = context_column
        self.question_column = question_column
        # One list column, or several columns separated by commas (ending0,ending1,...).
        self.choices_column = choices_column
        self.label_column = label_column or "label"
        self.id_column = id_column

    def read(self, path: Path, labels: Sequence[str] | None = None, require_labels: bool = True) -> list:
        path = Path(path)
        columns, rows = load_table(path)
        context = _column(self.context_column, columns, ("context", "article", "passage"))
        question = _column(self.question_column, columns, ("question", "query"))
        choice_columns = (self.choices_column or _column(None, columns, ("choices", "options", "candidates")))
        choice_columns = [c.strip() for c in choice_columns.split(",")]
        for name in choice_columns:
            require_column(path, columns, name, "--choices-column")
        if self.context_column:
            require_column(path, columns, context, "--context-column")
        if self.question_column:
            require_column(path, columns, question, "--question-column")
        if require_labels:
            require_column(path, columns, self.label_column, "--label-column")
        examples = []
        for index, row in enumerate(rows):
            if len(choice_columns) == 1:
                choices = row[choice_columns[0]]
                if not isinstance(choices, list):
                    raise DataError(f"{path}: row {index + 1}: {choice_columns[0]!r} must be a list of choices (or "
                                    "name several choice columns: --choices-column a,b,c)")
            else:
                choices = [row[c] for c in choice_columns]
            if any(c is None or c == "" for c in choices):
                raise DataError(f"{path}: row {index + 1}: an empty choice; every row needs all its choices (fill "
                                "them in, or leave the rows with fewer choices out)")
            choices = [str(c) for c in choices]
            if examples and len(choices) != len(examples[0].choices):
                raise DataError(f"{path}: row {index + 1}: {len(choices)} choices, row 1 has "
                                f"{len(examples[0].choices)}; a batch needs the same number: pad the choice lists "
                                "or split the data")
            label = self._label(row.get(self.label_column), choices, path, index)
            if label is None and require_labels:
                raise DataError(f"{path}: row {index + 1} has no {self.label_column!r}")
            examples.append(MultipleChoiceExample(
                guid=_guid(row, self.id_column or "id", path, index),
                context=str(row[context]) if context in columns and row[context] is not None else "",
                question=str(row[question]) if question in columns and row[question] is not None else "",
                choices=choices, label=label,
            ))
        check_not_empty(examples, path)
        return examples

    @staticmethod
    def _label(value: Any, choices: list[str], path: Path, index: int) -> int | None:
        """A choice index, or the text of the right choice."""
        if value is None or value == "":
            return None
        if isinstance(value, str) and value in choices:
            return choices.index(value)
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            label = int(value)
            if 0 <= label < len(choices):
                return label
        raise DataError(f"{path}: row {index + 1}: label {value!r} is neither a choice index 0..{len(choices) - 1} "
                        "nor the text of a choice")
