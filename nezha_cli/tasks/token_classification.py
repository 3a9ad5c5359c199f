"""Token classification (People's Daily NER, generic NER) with character-level BIO tags.

The tags belong to the input units (characters for Chinese NER, words for word-level data); the model sees
WordPiece tokens of the joined text. Chinese characters are single tokens, but WordPiece merges a run of digits or
Latin letters into one token ("1997", "ibm") or splits a word into several ("##"). The alignment:

- training: a token takes the tag of the first unit it covers; the further tokens of a unit are ignored (-100);
- prediction: the tokens' tags are decoded together as the most probable valid IOB2 sequence (``decode_tags``);
  a token's tag goes to every unit it covers, inside an entity as its continuation (``B-X`` on the
  first unit, ``I-X`` on the rest); a unit without a token of its own (whitespace) is ``O``, or ``I-X`` inside
  an entity that goes on after it.

A sentence longer than ``max_seq_length - 2`` tokens is cut into overlapping windows (never truncated); each token
is predicted from the window where it has the most context on both sides.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nezha_cli.errors import DataError
from nezha_cli.tasks.base import NerExample, Task, check_not_empty, pad_batch
from nezha_cli.tasks.metrics import entity_scores
from nezha_cli.tasks.readers import check_label, looks_like_conll, read_conll, read_tsv, split_header
from nezha_cli.tasks.tokenization import tokens_with_offsets
from nezha_cli.text.word_features import PAD_ID, WordFeaturizer

TOKENS_NAMES = ("text_a", "tokens", "text", "chars")
TAGS_NAMES = ("label", "labels", "tags", "ner_tags")

if TYPE_CHECKING:
    import torch

    from nezha_cli.modeling.crf import CrfTransitions


def join_units(units: Sequence[str]) -> tuple[str, list[int]]:
    """The text the tokenizer sees and, per character of it, the index of the unit it belongs to.

    Characters are concatenated (so that digit and Latin runs become the words WordPiece was trained on); words
    of word-level data are separated by a space (which maps to the unit before it and starts no token).
    """
    separator = "" if all(len(u) == 1 for u in units) else " "
    unit_of_char: list[int] = []
    for i, unit in enumerate(units):
        unit_of_char.extend([i] * (len(unit) + (len(separator) if i < len(units) - 1 else 0)))
    return separator.join(units), unit_of_char


def align_tokens(units: Sequence[str], tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the sentence and, per token, the (first, last) unit it covers, or (-1, -1) for a token that
    continues a unit whose first token came earlier."""
    text, unit_of_char = join_units(units)
    ids, offsets = tokens_with_offsets(tokenizer, text)
    spans: list[tuple[int, int]] = []
    covered = -1  # the last unit that already has its first token
    for begin, end in offsets:
        first, last = unit_of_char[begin], unit_of_char[max(begin, end - 1)]
        spans.append((first, last) if first > covered else (-1, -1))
        covered = max(covered, last)
    return ids, spans


def windows(length: int, max_tokens: int) -> list[tuple[int, int]]:
    """(start, end) token windows of at most ``max_tokens``, overlapping by half a window."""
    if length <= max_tokens:
        return [(0, length)]
    stride = max(1, max_tokens // 2)
    spans = []
    start = 0
    while True:
        end = min(start + max_tokens, length)
        spans.append((start, end))
        if end == length:
            return spans
        start += stride


def continuation(tag: str) -> str:
    """The tag of the further units of a token tagged ``tag`` (B-X -> I-X)."""
    if tag == "O" or "-" not in tag:
        return tag
    prefix, _, entity_type = tag.partition("-")
    return f"I-{entity_type}" if prefix in ("B", "I") else tag


def transition_mask(labels: Sequence[str]) -> np.ndarray | None:
    """[C + 1, C] allowed transitions of IOB2 (row C: the sentence start), or None when the labels are not IOB2.

    I-X may only continue B-X or I-X; everything else may follow anything.
    """
    types = {label[2:] for label in labels if label[:2] in ("B-", "I-")}
    if not types or any(label != "O" and label[:2] not in ("B-", "I-") for label in labels) \
            or any(f"B-{t}" not in labels for t in types):
        return None
    allowed = np.ones((len(labels) + 1, len(labels)), dtype=bool)
    for j, label in enumerate(labels):
        if label.startswith("I-"):
            allowed[:, j] = [previous in (f"B-{label[2:]}", label) for previous in (*labels, "<start>")]
    return allowed


@functools.lru_cache(maxsize=16)
def _shared_transition_mask(labels: tuple[str, ...]) -> np.ndarray | None:
    # Built once per label set, not once per sentence; shared, so read-only.
    allowed = transition_mask(labels)
    if allowed is not None:
        allowed.flags.writeable = False
    return allowed


def decode_tags(logits: np.ndarray, id2label: dict[int, str], crf: CrfTransitions | None = None) -> list[str]:
    """The most probable tag sequence for a sentence's [T, C] token logits that is valid IOB2 (Viterbi over the
    per-token log-probabilities), or the per-token argmax for other tag schemes. With a ``crf`` the logits are its
    emission scores and the sequence scores add its transitions (Viterbi always; still only valid IOB2).

    Taking each token's argmax alone yields sequences such as ``O I-PER I-PER``, which conlleval reads as an
    entity with whatever boundary the stray tags give; constrained decoding picks the best valid sequence.
    """
    labels = tuple(id2label[i] for i in range(logits.shape[-1]))
    allowed = _shared_transition_mask(labels)
    best = logits.argmax(-1)
    # The argmax path is the unconstrained optimum, so when it is valid it is also the constrained one (most
    # sentences): the Viterbi pass is needed only for the others.
    if crf is None and (allowed is None or (allowed[-1, best[0]] and allowed[best[:-1], best[1:]].all())):
        return [labels[i] for i in best]
    if allowed is None:
        allowed = np.ones((len(labels) + 1, len(labels)), dtype=bool)
    if crf is None:
        shifted = logits - logits.max(-1, keepdims=True)
        emissions = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        start, transitions, end = 0.0, 0.0, 0.0
    else:
        emissions, start, transitions, end = logits, crf.start, crf.transitions, crf.end
    penalty = np.where(allowed, 0.0, -np.inf)
    score = emissions[0] + start + penalty[-1]
    backpointers = []
    for t in range(1, len(emissions)):
        candidates = score[:, None] + transitions + penalty[:-1]  # [previous, current]
        backpointers.append(candidates.argmax(0))
        score = candidates.max(0) + emissions[t]
    score = score + end
    path = [int(score.argmax())]
    for pointers in reversed(backpointers):
        path.append(int(pointers[path[-1]]))
    return [labels[i] for i in reversed(path)]


def bridge_untokenized_units(tags: list[str], spans: Sequence[tuple[int, int]]) -> None:
    """Tag the units that have no token (whitespace) inside a predicted entity as its continuation, in place.

    Such a unit is predicted O by default, which would cut ``New York`` (units ``New``, `` ``, ``York``) into two
    entities; when the units on both sides belong to one entity (``B-X``/``I-X`` before, ``I-X`` after) it is
    ``I-X``.
    """
    covered = [False] * len(tags)
    for first, last in spans:
        covered[first:last + 1] = [True] * (last + 1 - first)
    following = "O"  # the tag of the next unit that has a token
    after = [""] * len(tags)
    for unit in range(len(tags) - 1, -1, -1):
        after[unit] = following
        if covered[unit]:
            following = tags[unit]
    for unit in range(1, len(tags)):
        previous, nxt = tags[unit - 1], after[unit]
        if not covered[unit] and previous[:2] in ("B-", "I-") and nxt == f"I-{previous[2:]}":
            tags[unit] = nxt


class TokenClassificationTask(Task):
    model_class_name = "NezhaForTokenClassification"
    main_metric = "f1"

    # -- reading ----------------------------------------------------------------------------------------------
    def read(self, path: Path, labels: Sequence[str] | None = None, require_labels: bool = True) -> list:
        path = Path(path)
        allowed = list(labels) if labels is not None else self.label_list
        examples = []
        for sentence in self.read_sentences(path, require_labels):
            line, tokens, tags = sentence[:3]
            if tags is not None and allowed is not None:
                for tag in tags:
                    check_label(path, line, tag, allowed)
            # Table rows bring their id (or row number); CoNLL/TSV sentences are numbered.
            guid = sentence[3] if len(sentence) > 3 else f"{path.stem}-{len(examples)}"
            examples.append(NerExample(guid=guid, tokens=tokens, tags=tags))
        check_not_empty(examples, path)
        return examples

    def read_sentences(self, path: Path, require_labels: bool) -> list[tuple[int, list[str], list[str] | None]]:
        """(line, tokens, tags) per sentence from the TSV layout (``text_a<TAB>label``, space-separated) or CoNLL."""
        if looks_like_conll(path):
            return [(line, tokens, tags) for line, tokens, tags in read_conll(path)]
        columns, rows = split_header(path, read_tsv(path), TOKENS_NAMES + TAGS_NAMES, ("text_a", "label"))
        t = columns.find(TOKENS_NAMES, "text_a")
        y = columns.find(TAGS_NAMES, "label", required=require_labels,
                         hint="test files without tags can only be predicted, not scored")
        sentences = []
        for row in rows:
            if not columns.header and not require_labels and len(row.fields) == 1:
                tokens, tags = row.fields[0].split(), None
            else:
                columns.check_width(row)
                tokens = row.fields[t].split()
                tags = row.fields[y].split() if y is not None else None
            if tags is not None and len(tags) != len(tokens):
                raise DataError(f"{path}:{row.line}: {len(tokens)} characters but {len(tags)} tags; they must "
                                "pair up one to one (both space-separated)")
            if tokens:
                sentences.append((row.line, tokens, tags))
        return sentences

    def labels_from_examples(self, examples: Sequence) -> list[str]:
        tags = {t for e in examples for t in (e.tags or ())}
        # O first, then each entity type's B before its I, so that ids read naturally.
        ordered = sorted(tags - {"O"}, key=lambda t: (t.partition("-")[2], t.partition("-")[0]))
        return ["O", *ordered] if "O" in tags else ordered

    # -- features ---------------------------------------------------------------------------------------------
    def build_features(self, examples: Sequence, tokenizer, max_seq_length: int, label2id: dict[str, int],
                       training: bool, word_features: str | None = None) -> list[dict[str, Any]]:
        """Windows of at most ``max_seq_length`` tokens; with ``word_features`` (a scheme of
        :mod:`nezha_cli.text.word_features`) also each token's ``word_feature_ids``."""
        # Imported here: the task classes are listed by `nezha finetune --help`, which must not import torch.
        from nezha_cli.modeling.crf import IGNORE_INDEX

        max_tokens = max_seq_length - 2
        if max_tokens < 2:
            raise DataError(f"max_seq_length={max_seq_length} leaves no room for tokens; use at least 4")
        featurizer = WordFeaturizer(word_features) if word_features is not None else None
        features = []
        for index, example in enumerate(examples):
            ids, spans = align_tokens(example.tokens, tokenizer)
            if not ids and training:
                continue  # nothing but whitespace: no token to learn from (predicted all O)
            token_labels = None
            if example.tags is not None:
                token_labels = [label2id[example.tags[first]] if first >= 0 else IGNORE_INDEX for first, _ in spans]
            word_ids = None
            if featurizer is not None:
                per_unit = featurizer(example.tokens)
                word_ids = [per_unit[first] if first >= 0 else PAD_ID for first, _ in spans]
            for start, end in windows(len(ids), max_tokens):
                feature: dict[str, Any] = {
                    "input_ids": [tokenizer.cls_token_id, *ids[start:end], tokenizer.sep_token_id],
                    "token_type_ids": [0] * (end - start + 2),
                    "attention_mask": [1] * (end - start + 2),
                    "example_index": index,
                    "window": (start, end),
                }
                if word_ids is not None:
                    feature["word_feature_ids"] = [PAD_ID, *word_ids[start:end], PAD_ID]
                if token_labels is not None:
                    feature["labels"] = [IGNORE_INDEX, *token_labels[start:end], IGNORE_INDEX]
                if not training:
                    feature["spans"] = spans[start:end]
                    feature["num_tokens"] = len(ids)
                features.append(feature)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from nezha_cli.modeling.crf import IGNORE_INDEX

        return pad_batch(features, {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX,
                                    "word_feature_ids": PAD_ID})

    # -- predictions ------------------------------------------------------------------------------------------
    def decoding(self, model: torch.nn.Module) -> dict[str, Any]:
        from nezha_cli.modeling.crf import model_crf

        crf = model_crf(model)
        return {"crf": crf.numpy_transitions()} if crf is not None else {}

    def postprocess(self, examples, features, outputs: dict[str, list[np.ndarray]], id2label: dict[int, str],
                    crf: CrfTransitions | None = None) -> list:
        by_example: dict[int, list[tuple[dict, np.ndarray]]] = {}
        for feature, logits in zip(features, outputs["logits"]):
            by_example.setdefault(feature["example_index"], []).append((feature, logits))
        predictions = []
        for index, example in enumerate(examples):
            tags = ["O"] * len(example.tokens)
            windows_ = by_example.get(index, [])
            if not windows_:
                predictions.append(tags)
                continue
            num_tokens = windows_[0][0]["num_tokens"]
            best_score = np.full(num_tokens, -1.0)
            token_scores = np.zeros((num_tokens, windows_[0][1].shape[-1]), dtype=windows_[0][1].dtype)
            token_span = [(-1, -1)] * num_tokens
            for feature, logits in windows_:
                start, end = feature["window"]
                offset = np.arange(end - start)
                # Context on the nearer side, a little more for longer windows (BERT's max-context rule).
                score = np.minimum(offset, end - start - 1 - offset) + 0.01 * (end - start)
                better = np.flatnonzero(score > best_score[start:end])
                best_score[start + better] = score[better]
                token_scores[start + better] = logits[1 + better]
                for offset in better.tolist():
                    token_span[start + offset] = feature["spans"][offset]
            tagged = [p for p in range(num_tokens) if token_span[p][0] >= 0]
            if tagged:
                decoded = decode_tags(token_scores[tagged], id2label, crf)
                for position, tag in zip(tagged, decoded):
                    first, last = token_span[position]
                    tags[first] = tag
                    for unit in range(first + 1, last + 1):
                        tags[unit] = continuation(tag)
                bridge_untokenized_units(tags, [token_span[p] for p in tagged])
            predictions.append(tags)
        return predictions

    def has_references(self, examples: Sequence) -> bool:
        return all(e.tags is not None for e in examples)

    def compute_metrics(self, examples: Sequence, predictions: Sequence) -> dict[str, Any]:
        scores = entity_scores([e.tags for e in examples], predictions)
        return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
                "entities": scores["support"], "per_type": scores["per_type"], "examples": len(examples)}

    def prediction_records(self, examples: Sequence, predictions: Sequence) -> list[dict[str, Any]]:
        return [{"id": e.guid, "tokens": e.tokens, "prediction": p, **({"tags": e.tags} if e.tags else {})}
                for e, p in zip(examples, predictions)]
