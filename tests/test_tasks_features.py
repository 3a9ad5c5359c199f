"""Features and post-processing: truncation, NER alignment and windows, CMRC windows and n-best decoding."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from task_fixtures import write_vocab

from nezha_cli.modeling.crf import IGNORE_INDEX
from nezha_cli.tasks import get_task
from nezha_cli.tasks.base import NerExample, QAExample
from nezha_cli.tasks.question_answering import doc_spans, is_max_context
from nezha_cli.tasks.sequence_classification import encode_pair
from nezha_cli.tasks.token_classification import align_tokens, decode_tags, transition_mask, windows
from nezha_cli.tasks.tokenization import encode_prefix
from nezha_cli.text.tokenizer import BertTokenizer

CHARS = "我在年去了张三北京公司的人来说是好坏甲乙丙丁一二三四五六七八九十天地日月山水火木金土上下左右"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", [CHARS],
                        extra=["1997", "ibm", "un", "##aff", "##able", "1", "9", "7", "i", "b", "m", "##9", "##7"])
    return BertTokenizer(vocab)


def one_hot(ids: list[int], size: int) -> np.ndarray:
    out = np.zeros((len(ids), size), dtype=np.float32)
    out[np.arange(len(ids)), ids] = 1.0
    return out


# ------------------------------------------------------------------------------------------ classification


def test_encode_pair_truncates_the_longer_text_first(tokenizer):
    feature, truncated = encode_pair(tokenizer, "甲乙丙丁一二三四五六", "天地日月", max_seq_length=11)
    tokens = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    # budget 11 - 3 = 8: the first text loses tokens until both have 4.
    assert tokens == ["[CLS]", "甲", "乙", "丙", "丁", "[SEP]", "天", "地", "日", "月", "[SEP]"]
    assert feature["token_type_ids"] == [0] * 6 + [1] * 5
    assert truncated


def test_encode_prefix_equals_the_start_of_the_full_tokenization(tokenizer):
    rng = random.Random(0)
    pieces = list(CHARS) + ["IBM", "1997", "unaffable", " ", "，", "ibm1997", "x" * 120]
    for _ in range(20):
        text = "".join(rng.choice(pieces) for _ in range(600))
        for n in (5, 64, 200):
            assert encode_prefix(tokenizer, text, n) == tokenizer.encode(text)[:n]


def test_classification_collate_pads_and_keeps_labels(tokenizer):
    task = get_task("chnsenti")
    from nezha_cli.tasks.base import ClassificationExample

    examples = [ClassificationExample("a", "好", label="1"), ClassificationExample("b", "坏坏坏", label="0")]
    batch = task.collate(task.build_features(examples, tokenizer, 16, {"0": 0, "1": 1}, training=True))
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]


# ------------------------------------------------------------------------------------------------- NER


def test_ner_alignment_merged_and_split_tokens(tokenizer):
    # Characters as units: "1997" and "IBM" are each one WordPiece token covering four / three characters.
    units = list("我在1997年去IBM")
    ids, spans = align_tokens(units, tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["我", "在", "1997", "年", "去", "ibm"]
    assert spans == [(0, 0), (1, 1), (2, 5), (6, 6), (7, 7), (8, 10)]
    # Words as units: one word split into three pieces; only the first carries the word's tag.
    ids, spans = align_tokens(["我", "unaffable"], tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["我", "un", "##aff", "##able"]
    assert spans == [(0, 0), (1, 1), (-1, -1), (-1, -1)]


def test_ner_labels_on_first_tokens_and_predictions_back_to_every_character(tokenizer):
    task = get_task("ner")
    units = list("我在1997年去IBM")
    tags = ["O", "O", "B-T", "I-T", "I-T", "I-T", "O", "O", "B-ORG", "I-ORG", "I-ORG"]
    labels = ["O", "B-ORG", "I-ORG", "B-T", "I-T"]
    label2id = {t: i for i, t in enumerate(labels)}
    example = NerExample("s", units, tags)
    (train,) = task.build_features([example], tokenizer, 32, label2id, training=True)
    # [CLS] 我 在 1997 年 去 ibm [SEP]: each token takes the tag of its first character.
    assert train["labels"] == [IGNORE_INDEX, 0, 0, label2id["B-T"], 0, 0, label2id["B-ORG"], IGNORE_INDEX]
    (feature,) = task.build_features([example], tokenizer, 32, label2id, training=False)
    logits = one_hot([0] + [label for label in train["labels"][1:-1]] + [0], len(labels))
    predicted = task.postprocess([example], [feature], {"logits": [logits]}, dict(enumerate(labels)))
    # The token tag B-T spreads over 1997 as B-T I-T I-T I-T; B-ORG over IBM as B-ORG I-ORG I-ORG.
    assert predicted == [tags]


def test_decoding_gives_the_best_valid_iob2_sequence():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    id2label = dict(enumerate(labels))
    log = np.log
    # Per-token argmax would read O I-PER I-PER O: an entity without its B. The best valid sequence starts it
    # with B-PER where that costs least (token 1: B-PER 0.3 vs O 0.35 and I-PER 0.35).
    probs = np.array([[0.9, 0.02, 0.04, 0.02, 0.02],
                      [0.35, 0.3, 0.35, 0.0, 0.0],
                      [0.1, 0.1, 0.8, 0.0, 0.0],
                      [0.9, 0.05, 0.05, 0.0, 0.0]]) + 1e-6
    assert [labels[i] for i in probs.argmax(-1)] == ["O", "O", "I-PER", "O"]
    assert decode_tags(log(probs), id2label) == ["O", "B-PER", "I-PER", "O"]
    # I-LOC never starts a sentence nor continues a PER entity: B-PER I-LOC (0.21) loses to B-LOC I-LOC (0.14).
    probs = np.array([[0.1, 0.3, 0.0, 0.2, 0.4], [0.0, 0.0, 0.3, 0.0, 0.7]]) + 1e-6
    assert decode_tags(log(probs), id2label) == ["B-LOC", "I-LOC"]
    # Valid argmax sequences are left as they are.
    valid = one_hot([1, 2, 0, 3, 4, 4, 1], 5)
    assert decode_tags(valid, id2label) == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-PER"]


def test_decoding_equals_exhaustive_search_over_valid_sequences():
    # The argmax shortcut (valid argmax path) and the Viterbi pass against every valid sequence of short sentences.
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed = transition_mask(labels)
    rng = np.random.default_rng(0)
    for _ in range(200):
        logits = rng.normal(size=(int(rng.integers(1, 6)), len(labels))) * 3
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        valid = [path for path in itertools.product(range(len(labels)), repeat=len(logits))
                 if allowed[-1, path[0]] and all(allowed[a, b] for a, b in zip(path, path[1:]))]
        best = max(valid, key=lambda path: sum(log_probs[t, k] for t, k in enumerate(path)))
        assert decode_tags(logits, dict(enumerate(labels))) == [labels[k] for k in best]


def test_other_tag_schemes_are_decoded_token_by_token():
    assert transition_mask(["O", "B-PER", "I-PER"]) is not None
    # IOB1 (I- opens entities, no B-) and BIOES/other schemes: no IOB2 constraint to apply.
    for labels in (["O", "I-PER", "I-LOC"], ["O", "B-PER", "I-PER", "E-PER", "S-PER"], ["POS", "NEG"]):
        assert transition_mask(labels) is None
        id2label = dict(enumerate(labels))
        logits = one_hot([1, 0, len(labels) - 1], len(labels))
        assert decode_tags(logits, id2label) == [labels[1], labels[0], labels[-1]]


def test_windows_cover_every_token():
    assert windows(5, 8) == [(0, 5)]
    assert windows(30, 8) == [(0, 8), (4, 12), (8, 16), (12, 20), (16, 24), (20, 28), (24, 30)]


def test_long_sentence_is_windowed_and_predicted_from_its_best_window(tokenizer):
    task = get_task("pd-ner")
    labels = list(task.label_list)
    rng = random.Random(1)
    units = [rng.choice(CHARS) for _ in range(30)]
    tags = []
    for _ in units:  # random valid IOB2: an I-X only after B-X or I-X
        tag = rng.choice(labels)
        tags.append(tag if not tag.startswith("I-") or (tags and tags[-1][2:] == tag[2:]) else "O")
    example = NerExample("long", units, tags)
    label2id = {t: i for i, t in enumerate(labels)}
    features = task.build_features([example], tokenizer, 10, label2id, training=False)
    assert [f["window"] for f in features] == windows(30, 8)  # never truncated: 7 windows of at most 8 tokens
    outputs = []
    for f in features:
        start, end = f["window"]
        ids = [label2id[t] for t in tags[start:end]]
        # Each window is right only where the token has enough context; near its edges (other than the
        # sentence's own ends) it says B-LOC. The max-context rule must pick the right window for every token.
        for offset in range(end - start):
            near_start = offset < 2 and start > 0
            near_end = offset >= end - start - 2 and end < 30
            if near_start or near_end:
                ids[offset] = label2id["B-LOC"] if tags[start + offset] != "B-LOC" else label2id["O"]
        outputs.append(one_hot([0, *ids, 0], len(labels)))
    (predicted,) = task.postprocess([example], features, {"logits": outputs}, dict(enumerate(labels)))
    assert predicted == tags


# ------------------------------------------------------------------------------------------------ CMRC


def test_doc_spans_and_max_context():
    assert doc_spans(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    spans = doc_spans(10, 4, 3)
    # token 4: offset 1 of (3,4) (context 1) vs not in (0,4) and offset -2 in (6,4) -> window 1
    assert [is_max_context(spans, i, 4) for i in range(3)] == [False, True, False]


def test_cmrc_windows_training_positions_and_decoding(tokenizer):
    task = get_task("cmrc")
    task.doc_stride = 3
    context = "张三在1997年去了北京的IBM公司。"
    example = QAExample("q", "张三去了哪里", context, answers=[("IBM公司", 13)], train_answer=(13, 18))
    assert context[13:18] == "IBM公司"
    features = task.build_features([example], tokenizer, 16, {}, training=True)
    # 6 question tokens + 3 special tokens leave 7 context tokens per window.
    assert len(features) > 1
    found = []
    for f in features:
        if f["start_positions"]:
            tokens = tokenizer.convert_ids_to_tokens(f["input_ids"][f["start_positions"]:f["end_positions"] + 1])
            found.append(tokens)
        else:
            assert f["end_positions"] == 0  # the answer is not inside this window: [CLS]
    assert found and all(t == ["ibm", "公", "司"] for t in found)

    eval_features = task.build_features([example], tokenizer, 16, {}, training=False)
    starts, ends = [], []
    for f in eval_features:
        n = len(f["input_ids"])
        s, e = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
        s[1], e[2] = 9.0, 9.0  # a tempting span inside the question: never chosen
        for i, (a, b) in enumerate(f["offsets"]):
            if a == 13:
                s[f["context_begin"] + i] = 5.0
            if b == 18:
                e[f["context_begin"] + i] = 5.0
        starts.append(s)
        ends.append(e)
    (answer,) = task.postprocess([example], eval_features, {"start_logits": starts, "end_logits": ends}, {})
    assert answer == "IBM公司"  # cut from the original context: case kept


def test_cmrc_decoding_respects_max_answer_length(tokenizer):
    task = get_task("cmrc")
    task.max_answer_length = 2
    context = "甲乙丙丁一二三"
    example = QAExample("q", "问", context, answers=[("甲乙丙", 0)], train_answer=(0, 3))
    (f,) = task.build_features([example], tokenizer, 32, {}, training=False)
    s, e = np.zeros(len(f["input_ids"]), np.float32), np.zeros(len(f["input_ids"]), np.float32)
    begin = f["context_begin"]
    s[begin], e[begin + 2], e[begin + 1] = 5.0, 5.0, 1.0  # 甲..丙 is 3 tokens: too long; 甲乙 wins
    assert task.postprocess([example], [f], {"start_logits": [s], "end_logits": [e]}, {}) == ["甲乙"]


# ---------------------------------------------------------------------------------------- multiple choice


def test_multiple_choice_features_and_collate(tokenizer):
    from nezha_cli.tasks.base import MultipleChoiceExample

    task = get_task("multiple-choice")
    examples = [MultipleChoiceExample("a", "天上", "是", ["日", "土木"], 1),
                MultipleChoiceExample("b", "", "是", ["好", "坏"], 0)]
    batch = task.collate(task.build_features(examples, tokenizer, 16, {}, training=True))
    # Longest: [CLS] 天 上 [SEP] 是 土 木 [SEP]; without a context a choice is [CLS] 是 好 [SEP].
    assert batch["input_ids"].shape == (2, 2, 8)
    assert batch["labels"].tolist() == [1, 0]
    assert torch.equal(batch["attention_mask"][1, 0], torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]))


def test_prediction_batches_by_length_and_returns_feature_order(tokenizer):
    from nezha_cli.modeling import NezhaConfig, NezhaForTokenClassification
    from nezha_cli.tasks.inference import length_order, predict

    task = get_task("ner")
    labels = ["O", "B-PER", "I-PER"]
    lengths = [3, 9, 1, 6, 9, 2, 5]
    examples = [NerExample(guid=str(i), tokens=list(CHARS[i:i + n]), tags=["O"] * n) for i, n in enumerate(lengths)]
    features = task.build_features(examples, tokenizer, 32, {t: i for i, t in enumerate(labels)}, training=False)
    assert [len(features[i]["input_ids"]) - 2 for i in length_order(features)] == [9, 9, 6, 5, 3, 2, 1]
    torch.manual_seed(0)
    model = NezhaForTokenClassification(NezhaConfig(vocab_size=len(tokenizer.vocab), hidden_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, num_labels=len(labels)))
    batched = predict(task, model, features, batch_size=3)["logits"]
    alone = [predict(task, model, [feature], batch_size=1)["logits"][0] for feature in features]
    assert [len(logits) for logits in batched] == [n + 2 for n in lengths]
    for got, expected in zip(batched, alone):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # Multiple-choice features are as long as their longest choice.
    choices = [{"input_ids": [[1] * 4, [1] * 2]}, {"input_ids": [[1] * 3, [1] * 7]}]
    assert length_order(choices) == [1, 0]


def test_whitespace_unit_inside_a_predicted_entity_continues_it(tokenizer):
    task = get_task("ner")
    labels = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    label2id = {t: i for i, t in enumerate(labels)}
    # Units: 张 三 ␠ 北 京 ␠ 公 司 ␠ 人; the spaces get no token.
    units = ["张", "三", " ", "北", "京", " ", "公", "司", " ", "人"]
    example = NerExample("s", units, ["O"] * len(units))
    (feature,) = task.build_features([example], tokenizer, 32, label2id, training=False)
    token_tags = ["B-PER", "I-PER", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]  # 张 三 北 京 公 司 人
    logits = one_hot([0, *(label2id[t] for t in token_tags), 0], len(labels))
    (predicted,) = task.postprocess([example], [feature], {"logits": [logits]}, dict(enumerate(labels)))
    # Inside ORG the space continues the entity; between PER and ORG and before O it stays O.
    assert predicted == ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O"]
