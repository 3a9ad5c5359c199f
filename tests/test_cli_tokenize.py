from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from task_fixtures import assert_one_line_error

from nezha_cli.cli import cli

datasets = pytest.importorskip("datasets")


def run(*args: str, input: bytes | None = None):
    return CliRunner().invoke(cli, ["--quiet", "tokenize", *args], input=input)


def assert_no_output(tmp_path, *keep: str) -> None:
    """Nothing was written next to the inputs: no OUT, no temporary directory."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_tokenize(corpus_file, tmp_path):
    result = run(str(corpus_file), "-o", str(tmp_path / "out"), "--num-proc", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "out")
    data = datasets.load_from_disk(str(tmp_path / "out"))
    assert data.column_names == ["doc_id", "input_ids", "word_ids"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "nezha-tokenized" and manifest["inputs"] == [str(corpus_file)]


def test_tokenize_stdin_jsonl_and_options(tmp_path):
    result = run("-", "-o", str(tmp_path / "a"), "--no-wwm", "--num-proc", "1", input="一句话。\n\n另一句。\n".encode())
    assert result.exit_code == 0, result.output
    assert datasets.load_from_disk(str(tmp_path / "a"))["doc_id"] == [0, 1]
    jsonl = tmp_path / "c.jsonl.gz"
    import gzip

    jsonl.write_bytes(gzip.compress('{"body": "你好。"}\n{"body": "再见。"}\n'.encode()))
    result = run(str(jsonl), "--text-field", "body", "-o", str(tmp_path / "b"), "--num-proc", "1")
    assert result.exit_code == 0, result.output
    assert len(datasets.load_from_disk(str(tmp_path / "b"))) == 2


def test_help_shows_the_options():
    result = CliRunner().invoke(cli, ["tokenize", "--help"])
    for option in ("--vocab", "--build-vocab", "--text-field", "--encoding", "--errors", "--user-dict", "--no-wwm",
                   "--num-proc", "--overwrite", "[default: strict]"):
        assert option in result.output


def test_non_utf8_file(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("第一行。\n".encode() + "第二行。\n".encode("gbk"))
    result = run(str(path), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "gbk.txt:2: not valid utf-8", "--encoding", "--errors skip")
    assert_no_output(tmp_path, "gbk.txt")
    result = run(str(path), "-o", str(tmp_path / "out"), "--errors", "skip", "--num-proc", "1")
    assert result.exit_code == 0 and len(datasets.load_from_disk(str(tmp_path / "out"))) == 1


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n   \n", encoding="utf-8")
    assert_one_line_error(run(str(path), "-o", str(tmp_path / "out")), "no text in the input")
    assert_no_output(tmp_path, "empty.txt")


def test_binary_file(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" * 64)
    assert_one_line_error(run(str(path), "-o", str(tmp_path / "out")), "image.png: binary file")
    assert_no_output(tmp_path, "image.png")


def test_10mb_line_without_newline(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text("没有换行的文字" * (10 * 1024 * 1024 // 21), encoding="utf-8")
    assert_one_line_error(run(str(path), "-o", str(tmp_path / "out")), "huge.txt:1: line longer than",
                          "--max-line-bytes")
    assert_no_output(tmp_path, "huge.txt")


def test_vocab_without_special_tokens(corpus_file, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n中\n", encoding="utf-8")
    assert_one_line_error(run(str(corpus_file), "--vocab", str(vocab), "-o", str(tmp_path / "out")),
                          "vocab.txt: vocab lacks the special token(s) [SEP], [MASK]")
    assert_no_output(tmp_path, "corpus.txt", "vocab.txt")


def test_missing_input(tmp_path):
    assert_one_line_error(run(str(tmp_path / "nope.txt"), "-o", str(tmp_path / "out")), "nope.txt: input not found")
    assert_one_line_error(run(str(tmp_path / "*.txt"), "-o", str(tmp_path / "out")), "no files match")
    assert_no_output(tmp_path)


def test_outputs_that_would_destroy_or_feed_back_into_the_input(corpus_file, tmp_path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_text(corpus_file.read_text(encoding="utf-8"), encoding="utf-8")
    assert_one_line_error(run(str(corpus_dir), "-o", str(corpus_dir / "out")), "inside the input directory")
    assert_one_line_error(run(str(corpus_dir), "-o", str(corpus_dir), "--overwrite"), "would replace the input")
    assert_one_line_error(run(str(corpus_dir / "a.txt"), "-o", str(corpus_dir / "a.txt" / "out")),
                          "a.txt: a file, where the output path needs a directory")
    assert_one_line_error(run(str(corpus_dir / "a.txt"), "--user-dict", str(corpus_dir), "-o", str(tmp_path / "o")),
                          "--user-dict is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["corpus", corpus_file.name])
    assert [p.name for p in corpus_dir.iterdir()] == ["a.txt"]


def test_existing_output(corpus_file, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_one_line_error(run(str(corpus_file), "-o", str(tmp_path / "out")), "already exists", "--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert_no_output(tmp_path, "corpus.txt", "out")
    result = run(str(corpus_file), "-o", str(tmp_path / "out"), "--overwrite", "--num-proc", "1")
    assert result.exit_code == 0 and not (tmp_path / "out" / "keep.txt").exists()


def test_vocab_and_build_vocab_together(corpus_file, tmp_path, bert_vocab):
    result = run(str(corpus_file), "--vocab", str(bert_vocab), "--build-vocab", "100", "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "not both")
