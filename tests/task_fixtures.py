"""Tiny model directories and data helpers for the task, finetune and evaluate tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DATA = Path(__file__).parents[1].parent / "shared" / "data"

TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   max_relative_position=8)

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real evaluation data) is not present")


def write_vocab(path: Path, texts: Iterable[str] = (), extra: Iterable[str] = ()) -> Path:
    """A vocab with the special tokens, every character of ``texts`` (lower-cased) and ``extra`` tokens."""
    chars = sorted({c for text in texts for c in text.lower() if not c.isspace()})
    tokens = list(dict.fromkeys([*SPECIAL, *extra, *chars]))
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def make_model_dir(path: Path, vocab: Path, architecture: str = "NezhaForPreTraining", seed: int = 0,
                   **config) -> Path:
    """A randomly initialised tiny model directory with its vocab.txt, like `nezha pretrain`'s OUT/final."""
    import torch

    from nezha_cli.modeling import MODEL_CLASSES, NezhaConfig

    vocab_size = len(Path(vocab).read_text(encoding="utf-8").splitlines())
    torch.manual_seed(seed)
    model = MODEL_CLASSES[architecture](NezhaConfig(vocab_size=vocab_size, **{**TINY_CONFIG, **config}))
    model.save_pretrained(path)
    (path / "vocab.txt").write_bytes(Path(vocab).read_bytes())
    return path


def head_lines(source: Path, target: Path, n: int, header: bool = True) -> Path:
    """The header (if any) and the first ``n`` data lines of a text file."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(lines[: n + int(header)]), encoding="utf-8")
    return target


def squad_subset(source: Path, target: Path, articles: slice) -> Path:
    data = json.loads(source.read_text(encoding="utf-8"))
    data["data"] = data["data"][articles]
    target.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return target


def data_texts(*paths: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in paths]


def assert_one_line_error(result, *fragments: str) -> None:
    """A CLI result that failed the way bad input must: exit code 2, one ``Error:`` line, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
