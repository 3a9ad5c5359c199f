"""The few tokenizer operations the tasks need, on top of ``nezha_cli.text.tokenizer``.

Features are built from WordPiece tokens and, where predictions must map back to the input text (NER, span
extraction), from each token's character offsets in that text.
"""

from __future__ import annotations

from pathlib import Path

from nezha_cli.errors import CheckpointError
from nezha_cli.text.vocab import VOCAB_NAME


def load_tokenizer(model_dir: Path | None = None, vocab: Path | None = None, do_lower_case: bool = True):
    """The BERT WordPiece tokenizer of a model directory (its ``vocab.txt``), or of an explicit vocab file."""
    from nezha_cli.text.tokenizer import BertTokenizer

    if vocab is None:
        if model_dir is None or not (Path(model_dir) / VOCAB_NAME).is_file():
            raise CheckpointError(
                f"{model_dir}: no {VOCAB_NAME} in the model directory; pass --vocab with the vocab the model was "
                "pretrained with"
            )
        vocab = Path(model_dir) / VOCAB_NAME
    return BertTokenizer(vocab, do_lower_case=do_lower_case)


def encode_prefix(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Ids of the first ``max_tokens`` tokens of ``text`` without tokenizing all of a very long text (ChnSentiCorp has
    reviews of 5,000+ characters for 256 tokens).

    The prefix is cut before a character that always starts a new token (whitespace, CJK, punctuation), so its
    tokens are exactly the first tokens of the whole text; when it yields too few, the whole text is tokenized.
    """
    limit = 2 * max_tokens + 16
    if len(text) > limit:
        cut = next((i for i in range(limit, min(len(text), limit + 256)) if _starts_token(text[i])), None)
        if cut is not None:
            ids = tokenizer.encode(text[:cut])
            if len(ids) >= max_tokens:
                return ids[:max_tokens]
    return tokenizer.encode(text)[:max_tokens]


def _starts_token(char: str) -> bool:
    return char.isspace() or "\u4e00" <= char <= "\u9fff" or (char.isascii() and not char.isalnum())


def tokens_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` (no special tokens) and each token's (start, end) character span in ``text``."""
    encoding = tokenizer.encode_with_offsets(text)
    return list(encoding.ids), [tuple(o) for o in encoding.offsets]
