"""The official metrics: CMRC 2018 scorer, conlleval entity P/R/F1, accuracy.

Every expected value is derived by hand in the comment next to it from the rules of the official CMRC 2018 script
(cmrc2018_evaluate.py v5) and of conlleval, not computed with the code under test.
"""

from __future__ import annotations

import random
import warnings

import pytest

from nezha_cli.tasks.metrics import (
    accuracy,
    cmrc_em,
    cmrc_f1,
    cmrc_gold_answers,
    cmrc_score,
    entity_scores,
    get_entities,
    longest_common_substring_length,
    mixed_segmentation,
    remove_punctuation,
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
