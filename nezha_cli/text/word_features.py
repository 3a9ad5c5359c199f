"""Word features for character taggers: where each character sits in its jieba word, and the word's tag.

A character-level Chinese NER model sees no word boundaries; small models in particular miss where a name ends.
``jieba-pos`` gives each character one id for its position in the word jieba's part-of-speech tagger puts it in
(B first, M middle, E last, S single-character word) and that word's tag class: person (nr, nrt, nrfg), place
(ns), organisation (nt), other proper noun (nz), abbreviation (j), common noun (n, ng, vn), number or time (m,
t, q, eng), punctuation and other non-words (x), anything else. Segmentation and tagger features of this kind are
the classic input of Chinese NER taggers (e.g. the segmentation embeddings of Peng & Dredze 2016, the word
features of Lattice LSTM's baselines). ``NezhaForTokenClassification`` adds one learnt vector per id to the
token embeddings (``word_feature_embeddings``); id 0 is for [CLS], [SEP] and padding and stays zero.

The ids depend on jieba's dictionary and HMM, so a model fine-tuned with them should be evaluated with the same
jieba release (the config records the scheme, ``word_features``, and the jieba version it was trained with).
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEMES = ("jieba-pos",)
POSITIONS = 4  # B, M, E, S
TAG_CLASSES = {
    "nr": 1, "nrt": 1, "nrfg": 1,
    "ns": 2,
    "nt": 3,
    "nz": 4,
    "j": 5,
    "n": 6, "ng": 6, "vn": 6,
    "m": 7, "t": 7, "q": 7, "eng": 7,
    "x": 8,
}
NUM_TAG_CLASSES = 9  # the classes above and 0 for every other tag
PAD_ID = 0
# The key of config.json (an attribute of the model's config) that records the jieba release a tagger was
# fine-tuned with.
JIEBA_VERSION_KEY = "word_features_jieba_version"


def num_word_features(scheme: str) -> int:
    """The number of feature ids of ``scheme`` (the size of its embedding table), the padding id included."""
    check_scheme(scheme)
    return 1 + NUM_TAG_CLASSES * POSITIONS


def check_scheme(scheme: str, what: str = "word features") -> None:
    from nezha_cli.errors import ConfigError

    if scheme not in SCHEMES:
        raise ConfigError(f"{what}={scheme!r}: unknown scheme; this release knows {', '.join(SCHEMES)}")


def feature_id(tag: str, position: int, length: int) -> int:
    """The id of the character at ``position`` of a word of ``length`` characters tagged ``tag``."""
    if length == 1:
        place = 3
    else:
        place = 0 if position == 0 else 2 if position == length - 1 else 1
    return 1 + TAG_CLASSES.get(tag, 0) * POSITIONS + place


def jieba_version() -> str:
    import jieba

    return getattr(jieba, "__version__", "unknown")


class WordFeaturizer:
    """Feature ids per unit (character or other token) of a sentence, with a cache: training files often repeat
    sentences (a training set given several times)."""

    def __init__(self, scheme: str = "jieba-pos"):
        check_scheme(scheme)
        self.scheme = scheme
        self._segmenter = None
        self._cache: dict[tuple[str, ...], list[int]] = {}

    def _pos_cut(self, text: str) -> list[tuple[str, str]]:
        if self._segmenter is None:
            from nezha_cli.text.segmenter import JiebaSegmenter

            # Its own segmenter, without a user dictionary: the features must not depend on one.
            self._segmenter = JiebaSegmenter()
        return self._segmenter.pos_cut(text)

    def __call__(self, units: Sequence[str]) -> list[int]:
        """One id per unit: that of the unit's first character (a unit of several characters, such as a run of
        digits, takes its first character's word)."""
        key = tuple(units)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        per_char: list[int] = []
        for word, tag in self._pos_cut("".join(units)):
            per_char.extend(feature_id(tag, i, len(word)) for i in range(len(word)))
        ids, offset = [], 0
        for unit in units:
            ids.append(per_char[offset] if unit and offset < len(per_char) else PAD_ID)
            offset += len(unit)
        self._cache[key] = ids
        return ids
