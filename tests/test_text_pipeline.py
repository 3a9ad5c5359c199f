from __future__ import annotations

import io
import json
import sys

import numpy as np
import pyarrow as pa
import pytest

from nezha_cli.errors import ConfigError, DataError, OutputExistsError
from nezha_cli.text.dataset_files import DatasetWriter, iter_batches, list_array
from nezha_cli.text.pipeline import tokenize_corpus
from nezha_cli.text.segmenter import shared_segmenter
from nezha_cli.text.tokenizer import BertTokenizer
from nezha_cli.text.vocab import vocab_sha256

datasets = pytest.importorskip("datasets")


def lines_of(path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_output_is_one_row_per_line_with_ids_and_word_ids(corpus_file, tmp_path, bert_vocab):
    out = tokenize_corpus([corpus_file], tmp_path / "out", num_proc=1, show_progress=False)
    data = datasets.load_from_disk(str(out))
    lines = lines_of(corpus_file)
    assert data.column_names == ["doc_id", "input_ids", "word_ids"] and len(data) == len(lines)
    tokenizer = BertTokenizer(bert_vocab)
    segmenter = shared_segmenter()
    for row, line in zip(data, lines):
        assert row["input_ids"] == tokenizer.encode(line)
        assert (row["input_ids"], row["word_ids"]) == tuple(tokenizer.encode_words(segmenter.cut(line)))
    doc_ids = np.asarray(data["doc_id"])
    assert doc_ids[0] == 0 and set(np.diff(doc_ids)) <= {0, 1} and doc_ids[-1] == 99  # 100 documents
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "nezha-tokenized"
    assert manifest["vocab_sha256"] == vocab_sha256(out / "vocab.txt") == vocab_sha256(bert_vocab)
    assert manifest["counts"]["rows"] == len(lines) and manifest["counts"]["documents"] == 100
    assert manifest["counts"]["tokens"] == sum(len(ids) for ids in data["input_ids"])


def test_same_output_whatever_the_number_of_processes(corpus_file, tmp_path):
    one = tokenize_corpus([corpus_file], tmp_path / "one", num_proc=1, show_progress=False)
    two = tokenize_corpus([corpus_file], tmp_path / "two", num_proc=2, show_progress=False)
    tables = [pa.Table.from_batches(list(iter_batches(d))) for d in (one, two)]
    assert tables[0].equals(tables[1])
    assert json.loads((one / "state.json").read_text())["_fingerprint"] == \
        json.loads((two / "state.json").read_text())["_fingerprint"]


def test_no_wwm_has_no_word_ids(corpus_file, tmp_path):
    out = tokenize_corpus([corpus_file], tmp_path / "out", whole_word_mask=False, num_proc=1, show_progress=False)
    data = datasets.load_from_disk(str(out))
    assert data.column_names == ["doc_id", "input_ids"]


def test_user_dict_changes_the_words(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("中共中央总书记发表新年讲话。\n", encoding="utf-8")
    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("发表新年讲话 100000 v\n", encoding="utf-8")
    plain = tokenize_corpus([corpus], tmp_path / "plain", num_proc=1, show_progress=False)
    custom = tokenize_corpus([corpus], tmp_path / "custom", user_dict=user_dict, num_proc=1, show_progress=False)
    words_plain = datasets.load_from_disk(str(plain))[0]["word_ids"]
    words_custom = datasets.load_from_disk(str(custom))[0]["word_ids"]
    assert words_custom[-7:-1] == [words_custom[-7]] * 6  # 发表新年讲话 is one word
    assert len(set(words_plain[-7:-1])) > 1
    with pytest.raises(DataError, match="--user-dict not found"):
        tokenize_corpus([corpus], tmp_path / "x", user_dict=tmp_path / "nope.txt", show_progress=False)


def test_build_vocab_from_stdin(monkeypatch, corpus_file, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(corpus_file.read_bytes())))
    out = tokenize_corpus(["-"], tmp_path / "out", build_vocab=3000, num_proc=1, show_progress=False)
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".arrow") == [
        "dataset_info.json", "manifest.json", "state.json", "vocab.txt"]  # the copy of stdin is gone
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["vocab"].startswith("built") and manifest["vocab_sha256"] == vocab_sha256(out / "vocab.txt")
    tokenizer = BertTokenizer(out / "vocab.txt")
    data = datasets.load_from_disk(str(out))
    assert [row["input_ids"] for row in data] == [tokenizer.encode(line) for line in lines_of(corpus_file)]
    assert manifest["counts"]["unk_tokens"] == 0


def test_refuses_existing_output_and_bad_options(corpus_file, tmp_path, bert_vocab):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        tokenize_corpus([corpus_file], tmp_path / "out", show_progress=False)
    with pytest.raises(ConfigError, match="not both"):
        tokenize_corpus([corpus_file], tmp_path / "x", vocab=bert_vocab, build_vocab=100, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "out"]


def test_overwrite_replaces_the_output(corpus_file, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("x")
    out = tokenize_corpus([corpus_file], tmp_path / "out", overwrite=True, num_proc=1, show_progress=False)
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()


def test_empty_corpus_leaves_no_output(tmp_path):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n  \n\u3000\n", encoding="utf-8")
    with pytest.raises(DataError, match="no text in the input"):
        tokenize_corpus([corpus], tmp_path / "out", num_proc=1, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt"]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_interrupted_run_leaves_no_output(monkeypatch, corpus_file, tmp_path, num_proc):
    import nezha_cli.text.pipeline as pipeline

    writes = []

    def interrupt(self, columns):
        writes.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.DatasetWriter, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus([corpus_file], tmp_path / "out", num_proc=num_proc, show_progress=False)
    assert writes and sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_bad_line_late_in_the_corpus_leaves_no_output(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes("好。\n".encode() * 5000 + b"\xff\xfe\n")
    with pytest.raises(DataError, match=r"c.txt:5001: not valid utf-8"):
        tokenize_corpus([corpus], tmp_path / "out", num_proc=2, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_dataset_writer_shards(tmp_path):
    writer = DatasetWriter(tmp_path, {"n": "int64", "ids": "list[int32]"}, max_shard_bytes=1)
    for start in range(0, 30, 10):
        lengths = np.arange(start, start + 10) % 4
        values = np.arange(lengths.sum(), dtype=np.int32)
        writer.write({"n": pa.array(np.arange(start, start + 10)), "ids": list_array(values, lengths, pa.int32())})
    names = writer.close()
    assert names == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    data = datasets.load_from_disk(str(tmp_path))
    assert data["n"] == list(range(30)) and [len(r) for r in data["ids"]] == [i % 4 for i in range(30)]
    assert sum(b.num_rows for b in iter_batches(tmp_path, ["ids"])) == 30
