"""Span-extraction reading comprehension (CMRC 2018, generic SQuAD-style QA) through ``NezhaForQuestionAnswering``.

Features follow BERT's run_squad: the question (at most ``max_query_length`` tokens) and a window of the context
in ``[CLS] question [SEP] context [SEP]``; windows start every ``doc_stride`` tokens. Decoding takes the
``n_best_size`` best start and end logits of every window, keeps spans inside the context of at most
``max_answer_length`` tokens whose start has its most context in that window, and answers with the best-scoring
span, cut from the original context text through the tokens' character offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nezha_cli.errors import DataError
from nezha_cli.io import read_json
from nezha_cli.tasks.base import QAExample, Task, check_not_empty, pad_batch
from nezha_cli.tasks.metrics import cmrc_score
from nezha_cli.tasks.tokenization import encode_prefix, tokens_with_offsets

logger = logging.getLogger(__name__)


@dataclass
class AnswerCheck:
    """How the gold answers of a file fit their contexts."""

    answers: int = 0
    mismatched: int = 0
    realigned: int = 0
    first_mismatch: str = ""

    def report(self, path: Path) -> None:
        if not self.mismatched:
            return
        logger.warning(
            "%s: %d of %d answers have an answer_start that does not match the context (first: %s); %d realigned "
            "to the nearest occurrence of the answer text, %d not found in the context and not used for training "
            "(scoring uses the answer texts)",
            path, self.mismatched, self.answers, self.first_mismatch, self.realigned,
            self.mismatched - self.realigned,
        )

if TYPE_CHECKING:
    import torch


def locate_answer(context: str, text: str, start: int) -> int | None:
    """``start`` when the answer is there, else the occurrence of ``text`` nearest to it, else None."""
    if not text:
        return None
    if 0 <= start and context[start:start + len(text)] == text:
        return start
    best = None
    position = context.find(text)
    while position >= 0:
        if best is None or abs(position - start) < abs(best - start):
            best = position
        position = context.find(text, position + 1)
    return best


def parse_squad(data: Any, path: Path, check: AnswerCheck, require_answers: bool) -> list[QAExample]:
    """Examples of a SQuAD v1.1-style ``data -> paragraphs -> context, qas`` object."""
    examples: list[QAExample] = []
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    examples.append(make_example(str(qa["id"]).strip(), qa["question"], context,
                                                 qa.get("answers") or [], path, check, require_answers))
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a SQuAD-style file (missing or malformed {exc}); expected data -> paragraphs "
                        "-> context, qas -> id, question, answers[text, answer_start]") from None
    return examples


def make_example(qid: str, question: str, context: str, answers: Sequence[dict], path: Path, check: AnswerCheck,
                 require_answers: bool) -> QAExample:
    if not isinstance(context, str) or not isinstance(question, str):
        raise DataError(f"{path}: question {qid}: context and question must be strings")
    if require_answers and not answers:
        raise DataError(f"{path}: question {qid} has no answers; training and scoring need gold answers")
    pairs: list[tuple[str, int]] = []
    train_answer = None
    for answer in answers:
        try:
            text, start = str(answer["text"]), int(answer["answer_start"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: question {qid}: each answer needs text and an integer answer_start") from None
        pairs.append((text, start))
        check.answers += 1
        found = locate_answer(context, text, start)
        if found != start:
            check.mismatched += 1
            check.first_mismatch = check.first_mismatch or qid
            check.realigned += found is not None
        if train_answer is None and found is not None:
            train_answer = (found, found + len(text))
    return QAExample(qid=qid, question=question, context=context, answers=pairs, train_answer=train_answer)


def read_squad_json(path: Path, require_answers: bool) -> tuple[list[QAExample], AnswerCheck]:
    check = AnswerCheck()
    examples = parse_squad(read_json(path, what="SQuAD-style JSON"), Path(path), check, require_answers)
    return examples, check


class QuestionAnsweringTask(Task):
    model_class_name = "NezhaForQuestionAnswering"
    main_metric = "AVERAGE"
    output_names = ("start_logits", "end_logits")
    split_files = {"train": ("train.json",), "dev": ("dev.json",), "test": ("test.json",)}
    label_list = ()  # spans, no label names
    doc_stride = 128
    max_query_length = 64
    n_best_size = 20
    max_answer_length = 30

    # -- reading ----------------------------------------------------------------------------------------------
    def read(self, path: Path, labels: Sequence[str] | None = None, require_labels: bool = True) -> list:
        examples, check = self.read_examples(Path(path), require_labels)
        check_not_empty(examples, path)
        if require_labels and check.answers and all(e.train_answer is None for e in examples):
            raise DataError(f"{path}: no answer_start matches its context and no answer text occurs in it; "
                            "answer_start must count characters (not bytes) of the context")
        check.report(path)
        return examples

    def read_examples(self, path: Path, require_answers: bool) -> tuple[list[QAExample], AnswerCheck]:
        return read_squad_json(path, require_answers)

    def model_overrides(self, labels: Sequence[str]) -> dict[str, Any]:
        return {"num_labels": 2}

    # -- features ---------------------------------------------------------------------------------------------
    def build_features(self, examples: Sequence, tokenizer, max_seq_length: int, label2id: dict[str, int],
                       training: bool) -> list[dict[str, Any]]:
        features = []
        for index, example in enumerate(examples):
            if training and example.train_answer is None:
                continue
            query = encode_prefix(tokenizer, example.question, self.max_query_length)
            context_ids, offsets = tokens_with_offsets(tokenizer, example.context)
            max_context_tokens = max_seq_length - len(query) - 3
            if max_context_tokens < 1:
                raise DataError(f"max_seq_length={max_seq_length} leaves no room for the context after a "
                                f"{len(query)}-token question; raise it")
            answer_tokens = None
            if example.train_answer is not None:
                answer_tokens = char_span_to_tokens(offsets, *example.train_answer)
            spans = doc_spans(len(context_ids), max_context_tokens, self.doc_stride)
            for span_index, (start, length) in enumerate(spans):
                input_ids = [tokenizer.cls_token_id, *query, tokenizer.sep_token_id,
                             *context_ids[start:start + length], tokenizer.sep_token_id]
                context_begin = len(query) + 2
                feature: dict[str, Any] = {
                    "input_ids": input_ids,
                    "token_type_ids": [0] * context_begin + [1] * (length + 1),
                    "attention_mask": [1] * len(input_ids),
                    "example_index": index,
                }
                if training:
                    start_position = end_position = 0  # [CLS]: the answer is not in this window (BERT, SQuAD 1.1)
                    if answer_tokens is not None:
                        first, last = answer_tokens
                        if start <= first and last < start + length:
                            start_position, end_position = first - start + context_begin, last - start + context_begin
                    feature["start_positions"] = start_position
                    feature["end_positions"] = end_position
                else:
                    feature["context_begin"] = context_begin
                    feature["offsets"] = offsets[start:start + length]
                    feature["max_context"] = [is_max_context(spans, span_index, start + i) for i in range(length)]
                features.append(feature)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        batch = pad_batch(features, {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0})
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features], dtype=torch.long)
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features], dtype=torch.long)
        return batch

    # -- predictions ------------------------------------------------------------------------------------------
    def postprocess(self, examples, features, outputs: dict[str, list[np.ndarray]], id2label: dict[int, str]) -> list:
        best: dict[int, tuple[float, str]] = {}
        for feature, start_logits, end_logits in zip(features, outputs["start_logits"], outputs["end_logits"]):
            example = examples[feature["example_index"]]
            candidate = best_span(feature, start_logits, end_logits, self.n_best_size, self.max_answer_length)
            if candidate is None:
                continue
            score, char_start, char_end = candidate
            previous = best.get(feature["example_index"])
            if previous is None or score > previous[0]:
                best[feature["example_index"]] = (score, example.context[char_start:char_end])
        return [best[i][1] if i in best else "" for i in range(len(examples))]

    def has_references(self, examples: Sequence) -> bool:
        return all(e.answers for e in examples)

    def compute_metrics(self, examples: Sequence, predictions: Sequence) -> dict[str, Any]:
        golds = [(e.qid, [text for text, _ in e.answers]) for e in examples]
        return cmrc_score(golds, {e.qid: p for e, p in zip(examples, predictions)})

    def prediction_records(self, examples: Sequence, predictions: Sequence) -> dict[str, str]:
        return {e.qid: p for e, p in zip(examples, predictions)}


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last token overlapping characters [char_start, char_end), or None if no token does."""
    first = next((i for i, (_, end) in enumerate(offsets) if end > char_start), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < char_end), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def doc_spans(num_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) windows over the context tokens, as BERT's run_squad makes them."""
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        length = min(num_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= num_tokens:
            return spans
        start += min(length, doc_stride)


def is_max_context(spans: Sequence[tuple[int, int]], span_index: int, position: int) -> bool:
    """Whether token ``position`` has its most context (min of left and right, plus 1% of the window length) in
    window ``span_index`` among all windows that hold it (BERT's ``_check_is_max_context``)."""
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return best_index == span_index


def best_span(feature: dict[str, Any], start_logits: np.ndarray, end_logits: np.ndarray, n_best_size: int,
              max_answer_length: int) -> tuple[float, int, int] | None:
    """(score, char_start, char_end) of the best valid span of one window, or None."""
    begin = feature["context_begin"]
    offsets = feature["offsets"]
    max_context = feature["max_context"]
    starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
    ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    best = None
    for s in starts:
        i = int(s) - begin
        if not (0 <= i < len(offsets)) or not max_context[i]:
            continue
        for e in ends:
            j = int(e) - begin
            if not (0 <= j < len(offsets)) or j < i or j - i + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, offsets[i][0], offsets[j][1])
    return best
