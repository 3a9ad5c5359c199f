"""BERT's WordPiece tokenizer (BasicTokenizer + WordpieceTokenizer), id for id, fast on Chinese text.

The result is exactly that of transformers' ``BertTokenizer`` with the same vocab and ``do_lower_case`` (which
follows Google's BERT and adds two things: an NFC normalization, and special tokens such as ``[MASK]`` written in
the text are kept as such). The tests check this on tens of thousands of real lines.

Why it is fast: BERT's basic tokenization only ever splits a text at whitespace, around every CJK character and
around every punctuation character. Everything between two such boundaries (a *chunk*: one CJK character, one
punctuation character, or a run of other characters such as ``iphone6``) is tokenized independently of its
neighbours. So a regular expression cuts the normalized text into chunks at C speed, and each distinct chunk is
run through the reference algorithm once and cached. Chinese text has a few thousand distinct chunks.

:meth:`BertTokenizer.encode_words_batch` tokenizes sentences already cut into jieba words and tells which word each
token belongs to (whole word masking). There a table maps every character of a whole batch at once with numpy
(most Chinese characters and punctuation marks are a token by themselves), and only the runs of other characters
go through the chunk cache.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nezha_cli.text.vocab import SPECIAL_TOKENS, UNK, SpecialIds, Vocab, resolve_vocab

# Codes of characters in encode_words_batch beyond token ids (which are smaller).
_WORD, _SPACE, _ALONE = np.uint32(0xFFFFFFFD), np.uint32(0xFFFFFFFE), np.uint32(0xFFFFFFFF)
# Distinct chunks/words kept per tokenizer; the caches are emptied when they grow past it (memory stays bounded on
# any corpus, and a Zipfian vocabulary refills the frequent entries at once).
CACHE_LIMIT = 100_000

_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


class Encoding(NamedTuple):
    """Token ids (no special tokens added) and each token's ``(start, end)`` character span in the input text."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class _CharClasses(NamedTuple):
    control: re.Pattern  # removed by BERT's _clean_text (NUL, U+FFFD, categories C* except \t \n \r)
    chunk: re.Pattern  # one CJK char | one punctuation char | a run of anything else but whitespace
    punct: re.Pattern


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """A regex matching one character in ``ranges``.

    ``re`` tests characters beyond the BMP against a list of ranges one by one, and would do so for every
    character that is not in the class; a look-ahead keeps that to astral characters.
    """

    def members(rs):
        return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in rs)

    bmp = [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]
    astral = [(max(a, 0x10000), b) for a, b in ranges if b > 0xFFFF]
    parts = [f"[{members(bmp)}]"] if bmp else []
    if astral:
        parts.append(f"(?=[\\U00010000-\\U0010ffff])[{members(astral)}]")
    return f"(?:{'|'.join(parts)})"


def _class_ranges() -> dict[str, list[tuple[int, int]]]:
    """Code point ranges of BERT's character classes, from this Python's unicodedata as transformers' are:
    C removed (control), P punctuation, K CJK; whitespace and word characters are what is left."""
    # One letter per code point, computed in C-speed steps (a Python loop over 1.1M code points takes seconds).
    majors = "".join(c[0] for c in map(unicodedata.category, map(chr, range(0x110000))))
    table = list(majors.translate(str.maketrans("LMNSZ", "WWWWW")))
    for cp in range(0x3001):  # every whitespace character is below U+3001; \x0b, \x1c... are removed as control
        if chr(cp).isspace() and (table[cp] != "C" or cp in (9, 10, 13)):
            table[cp] = "S"
    table[0xFFFD] = "C"  # the replacement character is removed too
    for cp in itertools.chain(range(33, 48), range(58, 65), range(91, 97), range(123, 127)):
        table[cp] = "P"  # all non-letter/number ASCII counts as punctuation
    for a, b in _CJK_RANGES:  # unassigned code points there are removed as control characters first
        table[a : b + 1] = ["C" if c == "C" else "K" for c in table[a : b + 1]]
    letters = "".join(table)
    return {name: [(m.start(), m.end() - 1) for m in re.finditer(pattern, letters)]
            for name, pattern in (("control", "C+"), ("punct", "P+"), ("cjk", "K+"), ("word", "[WC]+"))}


def _cached_class_ranges() -> dict[str, list[tuple[int, int]]]:
    """:func:`_class_ranges`, kept in the user's cache directory per Unicode version (0.3 s to compute, every
    process start otherwise; the ranges depend on nothing else)."""
    import json
    import os
    import tempfile

    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nezha-cli"
    path = cache_dir / f"bert-char-classes-v1-unicode-{unicodedata.unidata_version}.json"
    try:
        return {k: [tuple(r) for r in v] for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        pass
    ranges = _class_ranges()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".classes-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(ranges, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: computed again next time
    return ranges


@functools.lru_cache(maxsize=1)
def _classes() -> _CharClasses:
    ranges = _cached_class_ranges()
    cjk, punct, word = (_char_class(ranges[k]) for k in ("cjk", "punct", "word"))
    return _CharClasses(
        control=re.compile(f"{_char_class(ranges['control'])}+"),
        chunk=re.compile(f"{cjk}|{punct}|{word}+"),
        punct=re.compile(punct),
    )


def _lower(text: str) -> str:
    # transformers lowercases character by character, so a word-final capital sigma becomes σ (str.lower: ς).
    return (text.replace("Σ", "σ") if "Σ" in text else text).lower()


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


class _Cache(dict):
    def __init__(self, compute):
        super().__init__()
        self.compute = compute

    def __missing__(self, key):
        if len(self) >= CACHE_LIMIT:
            self.clear()
        value = self[key] = self.compute(key)
        return value


def normalize(text: str, do_lower_case: bool = True) -> str:
    """Lowercase (if asked), drop control characters, NFC: what BERT does to a text before it splits it."""
    classes = _classes()
    if do_lower_case:
        text = _lower(text)
    if classes.control.search(text):
        text = classes.control.sub("", text)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


def split_on_punctuation(word: str) -> list[tuple[int, int]]:
    """(start, end) of the pieces of ``word`` split at whitespace and around each punctuation character."""
    spans: list[tuple[int, int]] = []
    start = None
    punct = _classes().punct
    for i, c in enumerate(word):
        if c.isspace():
            if start is not None:
                spans.append((start, i))
            start = None
        elif punct.match(c):
            if start is not None:
                spans.append((start, i))
            spans.append((i, i + 1))
            start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(word)))
    return spans


class BasicTokenizer:
    """BERT's BasicTokenizer (clean, split CJK characters and punctuation, lowercase and strip accents): the words
    WordPiece then splits, and the units a vocab is learnt from."""

    def __init__(self, do_lower_case: bool = True):
        self.do_lower_case = do_lower_case
        self._chunk_words = _Cache(self._split_chunk)

    def tokenize(self, text: str) -> list[str]:
        chunks = _classes().chunk.findall(normalize(text, self.do_lower_case))
        return list(itertools.chain.from_iterable(map(self._chunk_words.__getitem__, chunks)))

    def _split_chunk(self, chunk: str) -> tuple[str, ...]:
        word = _strip_accents(chunk.lower()) if self.do_lower_case else chunk
        return tuple(word[s:e] for s, e in split_on_punctuation(word))


class BertTokenizer:
    """BERT WordPiece tokenization with a ``vocab.txt`` (transformers' ``BertTokenizer`` without special tokens).

    ``vocab`` is a path, a :class:`Vocab`, or None for the BERT-Chinese vocab. ``encode`` returns ids without
    [CLS]/[SEP]; add them with :meth:`build_inputs_with_special_tokens`.
    """

    def __init__(self, vocab: Path | str | Vocab | None = None, do_lower_case: bool = True,
                 max_input_chars_per_word: int = 100):
        self.vocab = resolve_vocab(vocab)
        self.do_lower_case = do_lower_case
        self.max_input_chars_per_word = max_input_chars_per_word
        self._token_to_id = self.vocab.token_to_id
        self._unk_id = self.vocab.unk_token_id
        self._classes = _classes()
        self._special = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))
        self._chunk_ids = _Cache(lambda chunk: tuple(i for i, _, _ in self._tokenize_chunk(chunk)))
        self._chunk_spans = _Cache(self._tokenize_chunk)
        self._chunk_starts = _Cache(self._chunk_with_starts)
        self._char_table: np.ndarray | None = None

    # ------------------------------------------------------------------ vocab
    @property
    def vocab_size(self) -> int:
        return self.vocab.vocab_size

    def __len__(self) -> int:
        return self.vocab.vocab_size

    @property
    def special_ids(self) -> SpecialIds:
        return self.vocab.special_ids

    @property
    def pad_token_id(self) -> int:
        return self.vocab.pad_token_id

    @property
    def unk_token_id(self) -> int:
        return self.vocab.unk_token_id

    @property
    def cls_token_id(self) -> int:
        return self.vocab.cls_token_id

    @property
    def sep_token_id(self) -> int:
        return self.vocab.sep_token_id

    @property
    def mask_token_id(self) -> int:
        return self.vocab.mask_token_id

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_to_id.get(tokens, self._unk_id)
        return [self._token_to_id.get(t, self._unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        tokens = self.vocab.tokens
        if isinstance(ids, int):
            return tokens[ids] if 0 <= ids < len(tokens) else UNK
        return [tokens[i] if 0 <= i < len(tokens) else UNK for i in ids]

    def build_inputs_with_special_tokens(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None) -> list[int]:
        """``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``."""
        out = [self.cls_token_id, *ids_a, self.sep_token_id]
        if ids_b is not None:
            out += [*ids_b, self.sep_token_id]
        return out

    def create_token_type_ids(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None) -> list[int]:
        """Segment ids matching :meth:`build_inputs_with_special_tokens`: 0 for [CLS] A [SEP], 1 for B [SEP]."""
        return [0] * (len(ids_a) + 2) + ([1] * (len(ids_b) + 1) if ids_b is not None else [])

    # ------------------------------------------------------------------ text -> ids
    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` (``##`` marks a continuation, ``[UNK]`` an unknown word)."""
        return self.convert_ids_to_tokens(self.encode(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without [CLS]/[SEP]."""
        ids: list[int] = []
        for _, segment, special in self._segments(text):
            if special:
                ids.append(self._token_to_id[segment])
            else:
                chunks = self._classes.chunk.findall(normalize(segment, self.do_lower_case))
                ids.extend(itertools.chain.from_iterable(map(self._chunk_ids.__getitem__, chunks)))
        return ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_with_offsets(self, text: str) -> Encoding:
        """Token ids of ``text`` and, for each token, its ``(start, end)`` character span in ``text``.

        ``text[start:end]`` is the original text the token came from (before lowercasing and accent stripping):
        a CJK character or punctuation mark is its own span, the pieces of a word split it (``"iphone6"`` ->
        ``iphone`` (0, 6), ``##6`` (6, 7)), an ``[UNK]`` covers its whole word, and whitespace or removed control
        characters are in no span. Spans are exact whenever normalization maps characters one to one (always for
        Chinese and ASCII text); where it does not (decomposed accents, ligatures) the pieces of the affected word
        share its span.
        """
        ids, offsets, _ = self._encode_spans(text)
        return Encoding(ids, offsets)

    def encode_words(self, words: Sequence[str]) -> tuple[list[int], list[int]]:
        """Tokenize a sentence given as its words (e.g. from jieba) and tell which word each token belongs to.

        Returns ``(ids, word_ids)`` with ``ids == encode("".join(words))``. Tokens of one word share a word id;
        word ids count up from 0 over the words that produced tokens. Where WordPiece sees one word across several
        segmenter words (jieba cuts ``１９９８`` into four, ``iPhone６`` into two), those words are one word here:
        a whole word mask never cuts a WordPiece word.
        """
        ids, word_ids, _ = self.encode_words_batch([words])
        return ids.tolist(), word_ids.tolist()

    def encode_words_batch(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`encode_words` for many sentences at once: ``(ids, word_ids, lengths)``, the sentences' ids and
        word ids concatenated (int32) and the number of tokens of each sentence (int64).

        The sentences are joined by newlines into one text, whose characters a table maps at once: a CJK character
        or punctuation mark to its token, whitespace to nothing, and runs of other characters are tokenized as
        whole chunks (cached). Segmenter words that a run straddles become one word.
        """
        count = len(sentences)
        text = "\n".join(["".join(words) for words in sentences])
        n_words = np.fromiter(map(len, sentences), np.int64, count)
        word_lengths = np.fromiter(map(len, itertools.chain.from_iterable(sentences)), np.int64, int(n_words.sum()))
        # The word of every character (-1 for the newlines between sentences).
        separators = np.cumsum(n_words)[:-1]
        char_word = np.repeat(np.insert(np.arange(len(word_lengths)), separators, -1),
                              np.insert(word_lengths, separators, 1))
        codes = self._char_codes()[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)]
        single = np.flatnonzero(codes < _WORD)
        # Runs of word characters, and characters to tokenize alone, are chunks: tokenized (cached) with offsets.
        edges = np.flatnonzero(np.diff(np.r_[0, (codes == _WORD).view(np.int8), 0]))
        alone = np.flatnonzero(codes == _ALONE)
        run_starts = np.concatenate([edges[0::2], alone])
        run_ends = np.concatenate([edges[1::2], alone + 1])
        chunks = [self._chunk_starts[text[a:b]] for a, b in zip(run_starts.tolist(), run_ends.tolist())]
        run_ids = np.frombuffer(b"".join([c[0] for c in chunks]), np.int32)
        run_offsets = np.frombuffer(b"".join([c[1] for c in chunks]), np.int32)
        run_counts = np.fromiter((len(c[0]) >> 2 for c in chunks), np.int64, len(chunks))
        positions = np.concatenate([single, np.repeat(run_starts, run_counts) + run_offsets])
        order = np.argsort(positions, kind="stable")
        positions = positions[order]
        ids = np.concatenate([codes[single].astype(np.int32), run_ids])[order]
        # Words joined by a run that straddles them form one group; groups become word ids.
        joined = np.zeros(len(word_lengths) + 1, np.int64)
        first_word, last_word = char_word[run_starts], char_word[run_ends - 1]
        straddle = last_word > first_word
        joined += np.bincount(first_word[straddle] + 1, minlength=len(joined))
        joined -= np.bincount(last_word[straddle] + 1, minlength=len(joined))
        group = np.cumsum(np.cumsum(joined)[:-1] <= 0)
        token_word = char_word[positions]
        token_group = group[token_word]
        lengths = np.bincount(np.repeat(np.arange(count), n_words)[token_word], minlength=count).astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        new_word = np.r_[True, token_group[1:] != token_group[:-1]]
        new_word[starts[lengths > 0]] = True
        running = np.cumsum(new_word)
        word_ids = (running - running[np.repeat(starts, lengths)]).astype(np.int32)
        dirty = self._dirty_sentences(sentences, text)
        if dirty:
            ids_parts = np.split(ids, starts[1:])
            word_parts = np.split(word_ids, starts[1:])
            for i in dirty:
                exact_ids, exact_words = self._encode_words_by_offsets(sentences[i])
                ids_parts[i] = np.asarray(exact_ids, np.int32)
                word_parts[i] = np.asarray(exact_words, np.int32)
                lengths[i] = len(exact_ids)
            ids = np.concatenate(ids_parts).astype(np.int32, copy=False)
            word_ids = np.concatenate(word_parts).astype(np.int32, copy=False)
        return ids, word_ids, lengths

    def warm_up(self) -> BertTokenizer:
        """Build the lookup tables now rather than on first use (e.g. before worker processes are forked)."""
        self._char_codes()
        return self

    def _char_codes(self) -> np.ndarray:
        """For every code point: its token id if BERT makes it one token on its own (CJK characters, punctuation),
        else _WORD (part of a chunk of word characters), _SPACE (no token) or _ALONE (a chunk by itself)."""
        if self._char_table is None:
            table = np.full(0x110000, _WORD, np.uint32)
            ranges = _cached_class_ranges()
            for a, b in ranges["control"]:  # (only in sentences that take the exact path anyway)
                table[a : b + 1] = _SPACE
            for cp in range(0x3001):
                if chr(cp).isspace() and (table[cp] != _SPACE or cp in (9, 10, 13)):
                    table[cp] = _SPACE
            for a, b in ranges["cjk"]:
                table[a : b + 1] = self._unk_id
            for a, b in ((0xF900, 0xFAFF), (0x2F800, 0x2FA1F)):  # compatibility ideographs: NFC changes them
                table[a : b + 1] = np.where(table[a : b + 1] == self._unk_id, _ALONE, table[a : b + 1])
            for token, token_id in self._token_to_id.items():
                if len(token) == 1 and table[ord(token)] == self._unk_id:
                    table[ord(token)] = token_id
            for a, b in ranges["punct"]:
                for cp in range(a, b + 1):
                    ids = self.encode(chr(cp))
                    table[cp] = ids[0] if len(ids) == 1 else _ALONE
            self._char_table = table
        return self._char_table

    def _chunk_with_starts(self, chunk: str) -> tuple[bytes, bytes]:
        """A chunk's token ids and each token's first character (int32 bytes)."""
        ids, offsets, _ = self._encode_spans(chunk)
        return (np.asarray(ids, np.int32).tobytes(),
                np.asarray([start for start, _ in offsets], np.int32).tobytes())

    # ------------------------------------------------------------------ internals
    def _segments(self, text: str):
        """(start, text, is_special) pieces of ``text``: special tokens written in the text are kept whole."""
        if "[" not in text or not self._special.search(text):
            yield 0, text, False
            return
        position = 0
        for match in self._special.finditer(text):
            if match.start() > position:
                yield position, text[position:match.start()], False
            yield match.start(), match.group(), True
            position = match.end()
        if position < len(text):
            yield position, text[position:], False

    def _normalize_with_map(self, text: str) -> tuple[str, list[int] | None, list[int] | None]:
        """:meth:`_normalize` and, unless it maps characters one to one, each output character's source span."""
        lowered = _lower(text) if self.do_lower_case else text
        if (len(lowered) == len(text) and not self._classes.control.search(lowered)
                and unicodedata.is_normalized("NFC", lowered)):
            return lowered, None, None
        normalized = normalize(text, self.do_lower_case)
        chars: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        control = self._classes.control
        for i, c in enumerate(text):
            if control.match(c):
                continue
            lowered = _lower(c) if self.do_lower_case else c
            chars.extend(lowered)
            starts.extend([i] * len(lowered))
            ends.extend([i + 1] * len(lowered))
        joined = "".join(chars)
        if joined == normalized:
            return normalized, starts, ends
        # NFC composed something: compose cluster by cluster (a starter and what follows it) to keep the map.
        out_chars, out_starts, out_ends = [], [], []
        cluster_starts = [j for j, c in enumerate(joined) if j == 0 or _is_cluster_start(c)] + [len(joined)]
        for a, b in zip(cluster_starts, cluster_starts[1:]):
            composed = unicodedata.normalize("NFC", joined[a:b])
            out_chars.append(composed)
            out_starts.extend([starts[a]] * len(composed))
            out_ends.extend([ends[b - 1]] * len(composed))
        if "".join(out_chars) == normalized:
            return normalized, out_starts, out_ends
        # Composition across clusters (rare Hangul/Indic sequences): spread the text's span evenly.
        n, m = len(normalized), len(text)
        return normalized, [i * m // n for i in range(n)], [min(m, (i + 1) * m // n + 1) for i in range(n)]

    def _tokenize_chunk(self, chunk: str) -> tuple[tuple[int, int, int], ...]:
        """The reference algorithm on one chunk: (id, start, end) per token, spans in chunk characters."""
        if self.do_lower_case:
            per_char = [_strip_accents(c.lower()) for c in chunk]
            word = "".join(per_char)
            source: list[int] | None = [i for i, piece in enumerate(per_char) for _ in piece]
            reference = _strip_accents(chunk.lower())
            if word != reference:
                word, source = reference, None
        else:
            word, source = chunk, list(range(len(chunk)))
        out = []
        for s, e in split_on_punctuation(word):
            for token_id, ps, pe in self._wordpiece(word[s:e]):
                if source is None:
                    out.append((token_id, 0, len(chunk)))
                else:
                    out.append((token_id, source[s + ps], source[s + pe - 1] + 1))
        return tuple(out)

    def _wordpiece(self, word: str) -> list[tuple[int, int, int]]:
        """Greedy longest-match-first WordPiece: (id, start, end) per piece; the whole word is [UNK] if it fails."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return [(self._unk_id, 0, n)]
        vocab = self._token_to_id
        pieces = []
        start = 0
        while start < n:
            end = n
            while start < end:
                token_id = vocab.get(word[start:end] if start == 0 else "##" + word[start:end])
                if token_id is not None:
                    break
                end -= 1
            else:
                return [(self._unk_id, 0, n)]
            pieces.append((token_id, start, end))
            start = end
        return pieces

    def _dirty_sentences(self, sentences: Sequence[Sequence[str]], text: str) -> list[int]:
        """Sentences where word-by-word tokenization may differ from the whole sentence's: special tokens written
        in the text, control characters, or text that NFC changes."""

        def dirty(text: str) -> bool:
            return bool(("[" in text and self._special.search(text))
                        or (not text.isprintable() and self._classes.control.search(text))
                        or not unicodedata.is_normalized("NFC", _lower(text) if self.do_lower_case else text))

        if not dirty(text):
            return []
        return [i for i, words in enumerate(sentences) if dirty("".join(words))]

    def _encode_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[int]]:
        """ids, character spans, and the number of the chunk each token came from."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        chunks: list[int] = []
        chunk_no = 0
        for base, segment, special in self._segments(text):
            if special:
                ids.append(self._token_to_id[segment])
                offsets.append((base, base + len(segment)))
                chunks.append(chunk_no)
                chunk_no += 1
                continue
            normalized, starts, ends = self._normalize_with_map(segment)
            for match in self._classes.chunk.finditer(normalized):
                j = match.start()
                for token_id, s, e in self._chunk_spans[match.group()]:
                    ids.append(token_id)
                    chunks.append(chunk_no)
                    if starts is None:
                        offsets.append((base + j + s, base + j + e))
                    else:
                        offsets.append((base + starts[j + s], base + ends[j + e - 1]))
                chunk_no += 1
        return ids, offsets, chunks

    def _encode_words_by_offsets(self, words: Sequence[str]) -> tuple[list[int], list[int]]:
        """encode_words through character offsets (exact ids whatever the text): segmenter words that one chunk
        straddles are one word."""
        ids, offsets, chunks = self._encode_spans("".join(words))
        boundaries = set(itertools.accumulate(len(w) for w in words[:-1]))
        chunk_spans: dict[int, list[int]] = {}
        for (s, e), c in zip(offsets, chunks):
            span = chunk_spans.setdefault(c, [s, e])
            span[0], span[1] = min(span[0], s), max(span[1], e)
        for s, e in chunk_spans.values():
            boundaries.difference_update(range(s + 1, e))
        group_starts = sorted(boundaries | {0})
        word_ids: list[int] = []
        k, previous = -1, -1
        for s, _ in offsets:
            group = bisect.bisect_right(group_starts, s)
            if group != previous:
                k += 1
                previous = group
            word_ids.append(k)
        return ids, word_ids


def _is_cluster_start(c: str) -> bool:
    # Hangul vowel/trailing jamo compose with what precedes them although they are starters.
    return unicodedata.combining(c) == 0 and unicodedata.category(c)[0] != "M" and not 0x1160 <= ord(c) <= 0x11FF
