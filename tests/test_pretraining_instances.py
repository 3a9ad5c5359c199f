from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pyarrow as pa
import pytest

from nezha_cli.errors import ConfigError, DataError, OutputExistsError
from nezha_cli.pretraining.instances import (
    Block,
    InstanceConfig,
    _Task,
    build_block,
    create_instances_from_document,
    create_pretraining_data,
    truncate_seq_pair,
)
from nezha_cli.pretraining.masking import MaskingConfig
from nezha_cli.text.dataset_files import iter_batches
from nezha_cli.text.pipeline import tokenize_corpus
from nezha_cli.text.vocab import SpecialIds

datasets = pytest.importorskip("datasets")
SPECIAL = SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103, vocab_size=21128)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, real_documents, bert_vocab):
    from nezha_cli.text.corpora import write_documents

    root = tmp_path_factory.mktemp("tokenized")
    corpus = write_documents(real_documents[:120] + real_documents[-400:], root / "corpus.txt")
    return tokenize_corpus([corpus], root / "tok", num_proc=1, show_progress=False)


@pytest.fixture(scope="module")
def masked(tokenized, tmp_path_factory):
    out = tmp_path_factory.mktemp("masked") / "static"
    return create_pretraining_data(tokenized, out, num_proc=1, show_progress=False, block_tokens=20_000)


def table(directory) -> pa.Table:
    return pa.Table.from_batches(list(iter_batches(directory)))


# ------------------------------------------------------------------------------------------- BERT's algorithm
def bounds(lengths: list[int], start: int = 0) -> list[int]:
    """A document's segment offsets: segment i is tokens bounds[i]:bounds[i + 1]."""
    out = [start]
    for n in lengths:
        out.append(out[-1] + n)
    return out


def test_instances_from_a_document():
    rng = random.Random(0)
    documents = [bounds([rng.randint(5, 30) for _ in range(40)], start=10_000 * d) for d in range(50)]
    instances = [i for d in range(50) for i in create_instances_from_document(documents, d, 128, 0.1, rng)]
    random_next = []
    for a_start, a_stop, b_start, b_stop, is_random_next in instances:
        assert a_stop > a_start and b_stop > b_start and (a_stop - a_start) + (b_stop - b_start) <= 125
        if is_random_next:
            assert b_start // 10_000 != a_start // 10_000
        else:
            # B continues A in the same document.
            assert b_start // 10_000 == a_start // 10_000 and b_start >= a_stop
        random_next.append(is_random_next)
    # Half random, as BERT (a chunk of a single sentence at the end of a document is always random).
    assert 0.45 < np.mean(random_next) < 0.6
    # A walks through the document in order, never twice over the same tokens.
    for d in range(5):
        a_ranges = [(a, b) for a, b, *_ in create_instances_from_document(documents, d, 128, 0.1, rng)]
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(a_ranges, a_ranges[1:]))
        assert documents[d][0] <= a_ranges[0][0] and a_ranges[-1][1] <= documents[d][-1]


def test_truncate_seq_pair_trims_the_longer_segment_from_both_ends():
    rng = random.Random(1)
    fronts = []
    for _ in range(200):
        a_start, a_stop, b_start, b_stop = truncate_seq_pair(0, 90, 500, 530, 60, rng)
        assert (a_stop - a_start, b_stop - b_start) == (30, 30)  # A lost 60 to reach B's length, then equal
        assert 0 <= a_start and a_stop <= 90 and (b_start, b_stop) == (500, 530)
        fronts.append(a_start)
    assert 20 < np.mean(fronts) < 40  # from the front or the back at random
    # The lengths left are those of BERT's loop (trim the longer, B on a tie) for any lengths.
    for length_a, length_b, limit in [(10, 10, 15), (3, 40, 20), (7, 8, 15), (100, 1, 50), (5, 5, 2), (4, 4, 9)]:
        a_start, a_stop, b_start, b_stop = truncate_seq_pair(0, length_a, 500, 500 + length_b, limit, rng)
        la, lb = length_a, length_b
        while la + lb > limit:
            la, lb = (la - 1, lb) if la > lb else (la, lb - 1)
        assert (a_stop - a_start, b_stop - b_start) == (la, lb)


def test_block_instances_keep_the_words_of_the_source():
    # Token ids encode (row, word) so that the instances' word ids can be checked against the source rows.
    lengths, ids, words, doc_ids = [], [], [], []
    rng = np.random.default_rng(0)
    for row in range(60):
        n_words = int(rng.integers(3, 12))
        sizes = rng.integers(1, 4, n_words)
        ids += [1000 + row * 20 + w for w, size in enumerate(sizes) for _ in range(size)]
        words += [w for w, size in enumerate(sizes) for _ in range(size)]
        lengths.append(int(sizes.sum()))
        doc_ids.append(row // 6)
    block = Block(0, np.asarray(doc_ids), np.asarray(ids, np.int32), np.asarray(words, np.int32),
                  np.asarray(lengths))
    task = _Task(InstanceConfig(max_seq_length=32, dynamic=True), MaskingConfig(), SPECIAL, True)
    result = build_block(block, task)
    start = 0
    for length in result["lengths"]:
        row_ids = result["input_ids"][start : start + length]
        row_words = result["word_ids"][start : start + length]
        start += length
        assert row_ids[0] == SPECIAL.cls and row_ids[-1] == SPECIAL.sep and length <= 32
        assert ((row_words == -1) == np.isin(row_ids, (SPECIAL.cls, SPECIAL.sep))).all()
        # One word id per source word, numbered from 0 in order of appearance.
        regular = row_words >= 0
        pairs = set(zip(row_words[regular].tolist(), row_ids[regular].tolist()))
        assert len({w for w, _ in pairs}) == len({t for _, t in pairs})
        first_seen = list(dict.fromkeys(row_words[regular].tolist()))
        assert first_seen == list(range(len(first_seen)))


# ------------------------------------------------------------------------------------------- nezha mask output
def test_static_output_on_real_text(masked, tokenized):
    data = datasets.load_from_disk(str(masked))
    assert data.column_names == ["input_ids", "token_type_ids", "word_ids", "masked_lm_positions",
                                 "masked_lm_ids", "next_sentence_label"]
    manifest = json.loads((masked / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "nezha-masked" and manifest["dynamic"] is False
    assert manifest["vocab_sha256"] == json.loads((tokenized / "manifest.json").read_text())["vocab_sha256"]
    assert (masked / "vocab.txt").read_bytes() == (tokenized / "vocab.txt").read_bytes()
    t = table(masked)
    lengths = np.asarray(pa.compute.list_value_length(t.column("input_ids")))
    ids = t.column("input_ids").combine_chunks().flatten().to_numpy()
    words = t.column("word_ids").combine_chunks().flatten().to_numpy()
    types = t.column("token_type_ids").combine_chunks().flatten().to_numpy()
    positions = t.column("masked_lm_positions").combine_chunks().flatten().to_numpy()
    labels = t.column("masked_lm_ids").combine_chunks().flatten().to_numpy()
    predictions = np.asarray(pa.compute.list_value_length(t.column("masked_lm_positions")))
    starts = np.cumsum(lengths) - lengths
    assert lengths.max() <= 128
    assert (ids[starts] == SPECIAL.cls).all() and (ids[starts + lengths - 1] == SPECIAL.sep).all()
    assert ((words == -1) == np.isin(ids, (SPECIAL.cls, SPECIAL.sep))).all()
    assert (types[starts] == 0).all() and (types[starts + lengths - 1] == 1).all()
    where = np.repeat(starts, predictions) + positions
    assert (positions < np.repeat(lengths, predictions)).all() and (words[where] >= 0).all()
    # No masked jieba word is left partly unmasked.
    instance = np.repeat(np.arange(len(lengths)), lengths)
    key = instance * 10_000 + words
    masked_positions = np.zeros(len(ids), bool)
    masked_positions[where] = True
    masked_words = np.unique(key[masked_positions])
    partial = np.unique(key[~masked_positions & (words >= 0)])
    assert np.intersect1d(masked_words, partial).size == 0
    # 15% of the tokens, 80% [MASK] / 10% random / 10% unchanged.
    assert abs(len(where) / len(ids) - 0.15) < 0.01
    new = ids[where]
    assert abs((new == SPECIAL.mask).mean() - 0.8) < 0.02
    assert abs((new == labels).mean() - 0.1) < 0.02
    stats = manifest["statistics"]
    assert stats["instances"] == len(lengths) == manifest["instances"]
    assert stats["masked_tokens"] == len(where) and stats["words_masked"] == len(masked_words)
    assert stats["partial_words"] == 0 and stats["masked_fraction"] == round(len(where) / len(ids), 4)


def test_dynamic_output_holds_the_same_instances_unmasked(masked, tokenized, tmp_path):
    dynamic = create_pretraining_data(tokenized, tmp_path / "dyn", dynamic=True, num_proc=1, show_progress=False,
                                      block_tokens=20_000)
    data = datasets.load_from_disk(str(dynamic))
    assert data.column_names == ["input_ids", "token_type_ids", "word_ids", "next_sentence_label", "instance_id"]
    assert data["instance_id"] == list(range(len(data)))
    manifest = json.loads((dynamic / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["dynamic"] is True and "masked_fraction" not in manifest["statistics"]
    static, unmasked = table(masked), table(dynamic)
    for column in ("token_type_ids", "word_ids", "next_sentence_label"):
        assert static.column(column).equals(unmasked.column(column))
    for row in range(0, len(data), 37):
        original = unmasked.column("input_ids")[row].as_py()
        masked_ids = static.column("input_ids")[row].as_py()
        positions = static.column("masked_lm_positions")[row].as_py()
        assert [original[p] for p in positions] == static.column("masked_lm_ids")[row].as_py()
        assert [a for i, a in enumerate(original) if i not in positions] == \
            [b for i, b in enumerate(masked_ids) if i not in positions]


def test_same_output_whatever_the_number_of_processes(tokenized, masked, tmp_path):
    two = create_pretraining_data(tokenized, tmp_path / "two", num_proc=2, show_progress=False,
                                  block_tokens=20_000)
    assert table(two).equals(table(masked))
    other_seed = create_pretraining_data(tokenized, tmp_path / "seed", seed=1, num_proc=1, show_progress=False,
                                         block_tokens=20_000)
    assert not table(other_seed).equals(table(masked))


def test_options(tokenized, tmp_path):
    out = create_pretraining_data(tokenized, tmp_path / "o", max_seq_length=64, max_predictions_per_seq=5,
                                  dupe_factor=2, whole_word_mask=False, num_proc=1, show_progress=False)
    t = table(out)
    assert max(len(r) for r in t.column("input_ids").to_pylist()) <= 64
    assert max(len(r) for r in t.column("masked_lm_positions").to_pylist()) <= 5
    options = json.loads((out / "manifest.json").read_text())["options"]
    assert options["dupe_factor"] == 2 and options["whole_word_mask"] is False
    with pytest.raises(ConfigError, match="max-seq-length"):
        create_pretraining_data(tokenized, tmp_path / "x", max_seq_length=4, show_progress=False)


def test_lines_longer_than_an_instance_are_warned_about(tokenized, tmp_path, bert_vocab, caplog):
    # A paragraph (or a whole document) per line: all past max_seq_length - 3 tokens is cut off, as in BERT.
    create_pretraining_data(tokenized, tmp_path / "sentences", max_seq_length=128, num_proc=1, show_progress=False)
    assert "lines longer than max_seq_length" not in caplog.text
    corpus = tmp_path / "one-line.txt"
    corpus.write_text("人民日报社论。" * 200 + "\n\n短句。\n", encoding="utf-8")
    tok = tokenize_corpus([corpus], tmp_path / "tok", vocab=bert_vocab, num_proc=1, show_progress=False)
    create_pretraining_data(tok, tmp_path / "cut", max_seq_length=64, num_proc=1, show_progress=False)
    assert "tok: 95% of the tokens are in lines longer than max_seq_length - 3 = 61 tokens" in caplog.text


def test_no_wwm_data(tmp_path, corpus_file):
    tok = tokenize_corpus([corpus_file], tmp_path / "tok", whole_word_mask=False, num_proc=1, show_progress=False)
    with pytest.raises(ConfigError, match="--no-wwm"):
        create_pretraining_data(tok, tmp_path / "x", whole_word_mask=True, show_progress=False)
    out = create_pretraining_data(tok, tmp_path / "m", num_proc=1, show_progress=False)
    assert json.loads((out / "manifest.json").read_text())["options"]["whole_word_mask"] is False


def test_not_a_tokenize_output(tokenized, masked, tmp_path):
    with pytest.raises(DataError, match="DATA not found"):
        create_pretraining_data(tmp_path / "missing", tmp_path / "o", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json; DATA must be an output directory of `nezha tokenize`"):
        create_pretraining_data(tmp_path / "empty", tmp_path / "o", show_progress=False)
    with pytest.raises(DataError, match="already a `nezha mask` output"):
        create_pretraining_data(masked, tmp_path / "o", show_progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(tokenized, copy)
    with open(copy / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(DataError, match="sha256 differs"):
        create_pretraining_data(copy, tmp_path / "o", show_progress=False)
    with pytest.raises(OutputExistsError):
        create_pretraining_data(tokenized, masked, show_progress=False)
    assert not (tmp_path / "o").exists()
