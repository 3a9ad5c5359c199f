"""jieba word segmentation, the word boundaries of NEZHA's whole word masking (and, with part-of-speech tags, the
word features of taggers: :mod:`nezha_cli.text.word_features`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from nezha_cli.errors import DataError


class JiebaSegmenter:
    """A private ``jieba.Tokenizer`` (default dictionary, HMM for unknown words, optional user dictionary).

    jieba loads its dictionary lazily (about a second); :meth:`initialize` does it up front, e.g. in a parent
    process before worker processes are forked from it.
    """

    def __init__(self, user_dict: Path | str | None = None, hmm: bool = True):
        import jieba

        jieba.setLogLevel(logging.WARNING)  # jieba reports its dictionary loading on stderr at INFO/DEBUG level
        self.user_dict = Path(user_dict) if user_dict is not None else None
        self.hmm = hmm
        self._tokenizer = jieba.Tokenizer()
        self._pos_tokenizer = None
        self._initialized = False

    def initialize(self) -> JiebaSegmenter:
        if self._initialized:
            return self
        self._tokenizer.initialize()
        if self.user_dict is not None:
            if not self.user_dict.is_file():
                raise DataError(f"{self.user_dict}: --user-dict not found")
            try:
                self._tokenizer.load_userdict(str(self.user_dict))
            except (ValueError, UnicodeDecodeError) as exc:
                raise DataError(f"{self.user_dict}: not a jieba user dictionary (one 'word [freq] [tag]' per "
                                f"line, UTF-8): {exc}") from None
        self._initialized = True
        return self

    def cut(self, text: str) -> list[str]:
        """The words of ``text``; joined they give ``text`` back."""
        self.initialize()
        return self._tokenizer.lcut(text, HMM=self.hmm)

    def pos_cut(self, text: str) -> list[tuple[str, str]]:
        """The words of ``text`` with their part-of-speech tags (jieba.posseg: the dictionary's tags, HMM for
        unknown words); joined, the words give ``text`` back."""
        self.initialize()
        if self._pos_tokenizer is None:
            import jieba.posseg

            self._pos_tokenizer = jieba.posseg.POSTokenizer(self._tokenizer)
        return [(pair.word, pair.flag) for pair in self._pos_tokenizer.lcut(text, HMM=self.hmm)]

    def cut_lines(self, lines: Sequence[str]) -> list[list[str]]:
        """:meth:`cut` of each line (lines must not contain newlines), in one jieba call.

        jieba never joins across a newline, so cutting the lines joined by newlines gives the words of each line
        separated by "\\n" words, at a fraction of the per-call cost.
        """
        self.initialize()
        words = self._tokenizer.lcut("\n".join(lines), HMM=self.hmm)
        out: list[list[str]] = []
        start = 0
        for _ in range(len(lines) - 1):
            try:
                end = words.index("\n", start)
            except ValueError:
                return [self.cut(line) for line in lines]
            out.append(words[start:end])
            start = end + 1
        out.append(words[start:])
        if len(out) != len(lines) or "\n" in out[-1]:
            return [self.cut(line) for line in lines]
        return out


@functools.lru_cache(maxsize=4)
def shared_segmenter(user_dict: str | None = None) -> JiebaSegmenter:
    """An initialized segmenter shared within the process (jieba takes about a second to load its dictionary)."""
    return JiebaSegmenter(user_dict).initialize()
