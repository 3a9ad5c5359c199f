"""Masked LM predictions as in BERT's ``create_masked_lm_predictions``, with whole word masking over jieba words.

Candidates are the words of an instance (with ``whole_word_mask``: runs of positions sharing a word id; otherwise
single tokens), special tokens excluded. They are visited in random order; a word is masked entirely when it fits
in what is left of the budget ``min(max_predictions_per_seq, max(1, round(length * masked_lm_prob)))`` and
skipped otherwise, so a word is never masked in part and counts fully toward the budget. Each masked position
becomes [MASK] with probability 0.8, stays unchanged with 0.1, and becomes a random vocab token with 0.1.

:func:`mask_instances` masks many instances at once with numpy. Its random numbers come from a counter-based
generator: a hash of the instance's key and of what is drawn (the i-th candidate, the position). An instance's
mask therefore depends on its key only, never on the other instances it is masked with, which is what lets the
collator mask an instance the same way in any batch, worker or process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from nezha_cli.errors import ConfigError
from nezha_cli.text.vocab import SpecialIds

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# What a random number is for (added to the counter), so that the streams never overlap.
_ORDER, _OUTCOME, _TOKEN = 0, 1 << 40, 2 << 40


@dataclass(frozen=True)
class MaskingConfig:
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_mask: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ConfigError(f"--masked-lm-prob {self.masked_lm_prob}: must be between 0 and 1")
        if self.max_predictions_per_seq < 1:
            raise ConfigError(f"--max-predictions-per-seq {self.max_predictions_per_seq}: must be at least 1")


class MaskedInstances(NamedTuple):
    """Masked instances, flat like their input: ``input_ids`` (masked), ``positions`` (within each instance,
    sorted) and ``labels`` (the original ids there), ``predictions`` (masked positions per instance), and
    ``counts``: tokens replaced by [MASK], by a random token, left unchanged, and words masked."""

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    counts: dict[str, int]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective hash of uint64 values (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def instance_keys(seed: int, stream: int, ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """A random key per instance from (seed, stream, instance id); e.g. stream = epoch for dynamic masking."""
    with np.errstate(over="ignore"):
        base = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], np.uint64) * _GOLDEN + np.uint64(stream & 0xFFFFFFFF))
        return _mix(base ^ _mix(np.asarray(ids, np.int64).astype(np.uint64) + _GOLDEN))


def _uniform(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per (key, counter)."""
    with np.errstate(over="ignore"):
        bits = _mix(keys ^ _mix(counters.astype(np.uint64) * _GOLDEN + np.uint64(1)))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def candidate_words(input_ids: np.ndarray, word_ids: np.ndarray | None, starts: np.ndarray, special: SpecialIds,
                    whole_word_mask: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(first position, length) of every maskable word, in order: with ``whole_word_mask`` the runs of equal word
    ids within an instance (-1 marks special tokens), otherwise every token that is not [CLS], [SEP] or [PAD]."""
    if word_ids is not None:
        regular = word_ids >= 0
    else:
        regular = ~np.isin(input_ids, (special.cls, special.sep, special.pad))
    if whole_word_mask and word_ids is not None:
        first = regular & np.r_[True, word_ids[1:] != word_ids[:-1]]
        first[starts] = regular[starts]
        run_starts = np.flatnonzero(first)
        # A run ends where the next one starts, at the next special token or at the end of the instance (which
        # the next instance's [CLS] marks already, as a rule).
        stops = np.r_[np.flatnonzero(~regular), len(input_ids)]
        if regular[starts[1:]].any():
            stops = np.union1d(stops, starts)
        run_ends = np.minimum(np.r_[run_starts[1:], len(input_ids)], stops[np.searchsorted(stops, run_starts)])
        return run_starts, run_ends - run_starts
    run_starts = np.flatnonzero(regular)
    return run_starts, np.ones(len(run_starts), np.int64)


def mask_instances(
    input_ids: np.ndarray,
    word_ids: np.ndarray | None,
    lengths: np.ndarray,
    keys: np.ndarray,
    special: SpecialIds,
    config: MaskingConfig,
) -> MaskedInstances:
    """Mask the instances stored back to back in ``input_ids`` (and ``word_ids``), ``lengths[i]`` tokens each,
    instance ``i`` drawing its random numbers from ``keys[i]`` (see :func:`instance_keys`)."""
    input_ids = np.asarray(input_ids)
    lengths = np.asarray(lengths, np.int64)
    keys = np.asarray(keys, np.uint64)
    word_ids = None if word_ids is None else np.asarray(word_ids)
    count = len(lengths)
    starts = np.zeros(count, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    run_starts, run_lengths = candidate_words(input_ids, word_ids, starts, special, config.whole_word_mask)
    instance = np.repeat(np.arange(count), lengths)
    run_instance = instance[run_starts]
    # Visit each instance's candidates in a random order (BERT shuffles them).
    # (The runs are grouped by instance already: instance + u in [0, 1) sorts within each group.)
    order = np.argsort(run_instance + _uniform(keys[run_instance], run_starts - starts[run_instance] + _ORDER))
    ordered_lengths = run_lengths[order]
    budget = np.minimum(config.max_predictions_per_seq,
                        np.maximum(1, np.rint(lengths * config.masked_lm_prob))).astype(np.int64)
    # BERT's greedy walk (take a word if it fits in the budget left, else skip it), all instances at once. Most
    # instances fill their budget within their first candidates: those are walked first, the rest only where some
    # budget is left (the same walk, in two parts).
    taken = np.zeros(len(order), bool)
    ordered_instance = run_instance[order]
    rank = np.arange(len(order)) - np.searchsorted(ordered_instance, np.arange(count))[ordered_instance]
    head = rank < 2 * config.max_predictions_per_seq
    _walk(np.flatnonzero(head), ordered_lengths, ordered_instance, budget, taken)
    rest = np.flatnonzero(~head)
    _walk(rest[budget[ordered_instance[rest]] > 0], ordered_lengths, ordered_instance, budget, taken)
    chosen = order[taken]
    chosen_lengths = run_lengths[chosen]
    offsets = np.cumsum(chosen_lengths) - chosen_lengths
    where = np.sort(np.repeat(run_starts[chosen] - offsets, chosen_lengths) + np.arange(int(chosen_lengths.sum())))
    owner = instance[where]
    local = where - starts[owner]
    outcome = _uniform(keys[owner], local + _OUTCOME)
    random_ids = (_uniform(keys[owner], local + _TOKEN) * special.vocab_size).astype(input_ids.dtype)
    labels = input_ids[where]
    output = input_ids.copy()
    to_mask, to_random = outcome < 0.8, outcome >= 0.9
    output[where[to_mask]] = special.mask
    output[where[to_random]] = random_ids[to_random]
    masked, randomized = int(to_mask.sum()), int(to_random.sum())
    counts = {"masked": masked, "random": randomized, "unchanged": len(where) - masked - randomized,
              "words_masked": len(chosen)}
    return MaskedInstances(output, local, labels, np.bincount(owner, minlength=count), counts)


def _walk(alive: np.ndarray, lengths: np.ndarray, instance: np.ndarray, budget: np.ndarray, taken: np.ndarray) -> None:
    """Take, in order, the candidates ``alive`` (grouped by instance) that fit in their instance's budget.

    Each round takes the words that fit as long as their running total fits (at least one per instance); a word
    longer than the budget left can never be taken later, as the budget only shrinks, so it is dropped.
    """
    while alive.size:
        alive = alive[lengths[alive] <= budget[instance[alive]]]
        if not alive.size:
            return
        lengths_alive, instance_alive = lengths[alive], instance[alive]
        running = np.cumsum(lengths_alive)
        first = np.r_[True, instance_alive[1:] != instance_alive[:-1]]
        running -= np.repeat((running - lengths_alive)[first], np.diff(np.r_[np.flatnonzero(first), alive.size]))
        take = running <= budget[instance_alive]
        taken[alive[take]] = True
        budget -= np.bincount(instance_alive[take], weights=lengths_alive[take], minlength=len(budget)).astype(np.int64)
        alive = alive[~take]


def create_masked_lm_predictions(input_ids: Sequence[int], word_ids: Sequence[int] | None, key: int,
                                 special: SpecialIds, config: MaskingConfig) -> tuple[list[int], list[int], list[int]]:
    """Mask one instance: ``(masked_input_ids, masked_lm_positions, masked_lm_ids)``, positions sorted. ``key``
    (e.g. from :func:`instance_keys`) determines the mask."""
    ids = np.asarray(input_ids, np.int64)
    words = None if word_ids is None else np.asarray(word_ids, np.int64)
    out = mask_instances(ids, words, np.asarray([len(ids)]), np.asarray([key], np.uint64), special, config)
    return out.input_ids.tolist(), out.positions.tolist(), out.labels.tolist()
