"""Word features for taggers (`--word-features jieba-pos`): the ids, their alignment to tokens, the model's use."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import TINY
from task_fixtures import write_vocab

from nezha_cli.errors import ConfigError
from nezha_cli.modeling import NezhaConfig, NezhaForTokenClassification
from nezha_cli.tasks import get_task
from nezha_cli.tasks.base import NerExample
from nezha_cli.text.tokenizer import BertTokenizer
from nezha_cli.text.word_features import PAD_ID, WordFeaturizer, feature_id, num_word_features

B, M, E, S = range(4)


def test_each_character_gets_its_place_in_the_word_and_the_word_class():
    import jieba.posseg

    text = "新闻出版署署长于友先在北京会见了他们"
    words = jieba.posseg.POSTokenizer(jieba.Tokenizer()).lcut(text)
    expected = []
    for word, tag in words:
        expected.extend(feature_id(tag, i, len(word)) for i in range(len(word)))
    ids = WordFeaturizer()(list(text))
    assert ids == expected
    # The classes that matter for names, read off the ids: 于友先 a person, 北京 a place, 新闻出版署 an organisation.
    assert ids[7:10] == [1 + 1 * 4 + B, 1 + 1 * 4 + M, 1 + 1 * 4 + E]
    assert ids[11:13] == [1 + 2 * 4 + B, 1 + 2 * 4 + E]
    assert ids[0:5] == [1 + 3 * 4 + B, *[1 + 3 * 4 + M] * 3, 1 + 3 * 4 + E]
    assert all(0 < i < num_word_features("jieba-pos") for i in ids)


def test_segmenter_pos_cut_gives_the_text_back_with_tags():
    from nezha_cli.text.segmenter import JiebaSegmenter

    text = "新华社北京1月5日电 江泽民会见了联合国秘书长安南。"
    words = JiebaSegmenter().pos_cut(text)
    assert "".join(w for w, _ in words) == text
    assert ("江泽民", "nr") in words and all(isinstance(t, str) and t for _, t in words)


def test_feature_ids_cover_the_table_and_single_character_words():
    assert feature_id("nr", 0, 1) == 1 + 4 + S
    assert feature_id("v", 0, 1) == 1 + S  # tags outside the classes share class 0
    ids = {feature_id(tag, p, n) for tag in ("nr", "ns", "nt", "nz", "j", "n", "m", "x", "v")
           for n in (1, 2, 3) for p in range(n)}
    assert ids == set(range(1, num_word_features("jieba-pos")))


def test_units_of_several_characters_take_their_first_characters_id():
    featurizer = WordFeaturizer()
    units = ["1997", "年", "在", "北", "京"]
    per_char = WordFeaturizer()(list("1997年在北京"))
    assert featurizer(units) == [per_char[0], per_char[4], per_char[5], per_char[6], per_char[7]]
    assert featurizer(units) is featurizer(units)  # repeated sentences are tagged once


def test_tagger_features_align_with_tokens_and_windows(tmp_path):
    task = get_task("pd-ner")
    chars = list("李四在上海工作")
    tokenizer = BertTokenizer(write_vocab(tmp_path / "vocab.txt", ["".join(chars)]))
    example = NerExample(guid="0", tokens=chars, tags=["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O"])
    label2id = {t: i for i, t in enumerate(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])}
    plain = task.build_features([example], tokenizer, 6, label2id, training=True)
    with_ids = task.build_features([example], tokenizer, 6, label2id, training=True, word_features="jieba-pos")
    assert all("word_feature_ids" not in f for f in plain)
    per_char = WordFeaturizer()(chars)
    for feature in with_ids:
        start, end = feature["window"]
        assert feature["word_feature_ids"] == [PAD_ID, *per_char[start:end], PAD_ID]
        assert len(feature["word_feature_ids"]) == len(feature["input_ids"])
    batch = task.collate(with_ids)
    assert batch["word_feature_ids"].shape == batch["input_ids"].shape


def test_model_adds_the_feature_vectors_and_needs_the_ids():
    config = NezhaConfig(**TINY, word_features="jieba-pos", id2label={0: "O", 1: "B-PER", 2: "I-PER"})
    torch.manual_seed(0)
    model = NezhaForTokenClassification(config).eval()
    ids = torch.randint(5, TINY["vocab_size"], (2, 9))
    features = torch.randint(1, num_word_features("jieba-pos"), (2, 9))
    with torch.no_grad():
        a = model(ids, word_feature_ids=features).logits
        b = model(ids, word_feature_ids=features.flip(-1)).logits
        padded = model(ids, word_feature_ids=torch.zeros_like(features)).logits
        body = model.nezha(ids).last_hidden_state
    assert not torch.allclose(a, b)
    # Id 0 adds nothing: the tagger then reads the plain body.
    torch.testing.assert_close(padded, model.classifier(body))
    with pytest.raises(ValueError, match="word features"):
        model(ids)


def test_config_keeps_and_checks_the_scheme():
    config = NezhaConfig(**TINY, word_features="jieba-pos")
    assert config.to_dict()["word_features"] == "jieba-pos"
    assert NezhaConfig.from_dict(config.to_dict()).word_features == "jieba-pos"
    assert "word_features" not in NezhaConfig(**TINY).to_dict()  # transformers' configs stay as they were
    with pytest.raises(ConfigError, match="word_features='jieba': unknown scheme"):
        NezhaConfig(**TINY, word_features="jieba").validate()
