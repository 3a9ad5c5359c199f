from __future__ import annotations

import numpy as np
import pytest

from nezha_cli.errors import ConfigError
from nezha_cli.pretraining.masking import (
    MaskingConfig,
    candidate_words,
    create_masked_lm_predictions,
    instance_keys,
    mask_instances,
)
from nezha_cli.text.vocab import SpecialIds

SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=1000)


def make_instances(count: int, seed: int = 0, word_length: int = 3):
    """Instances [CLS] words [SEP] words [SEP] of words of 1..word_length tokens."""
    rng = np.random.default_rng(seed)
    ids, words, lengths = [], [], []
    for _ in range(count):
        row_ids, row_words = [SPECIAL.cls], [-1]
        word = 0
        for _segment in range(2):
            for _ in range(int(rng.integers(5, 40))):
                size = int(rng.integers(1, word_length + 1))
                row_ids += rng.integers(10, 1000, size).tolist()
                row_words += [word] * size
                word += 1
            row_ids.append(SPECIAL.sep)
            row_words.append(-1)
        ids += row_ids
        words += row_words
        lengths.append(len(row_ids))
    return np.asarray(ids), np.asarray(words), np.asarray(lengths)


def test_candidates_are_words_without_special_tokens():
    ids = np.asarray([2, 10, 11, 12, 3, 13, 14, 3])
    words = np.asarray([-1, 0, 0, 1, -1, 0, 0, -1])
    starts = np.asarray([0])
    assert [tuple(x) for x in zip(*candidate_words(ids, words, starts, SPECIAL))] == [(1, 2), (3, 1), (5, 2)]
    assert candidate_words(ids, words, starts, SPECIAL, whole_word_mask=False)[0].tolist() == [1, 2, 3, 5, 6]
    assert candidate_words(ids, None, starts, SPECIAL)[0].tolist() == [1, 2, 3, 5, 6]
    # Two instances back to back: a word never continues into the next instance.
    two = candidate_words(np.r_[ids, ids], np.r_[words, words], np.asarray([0, 8]), SPECIAL)
    assert two[0].tolist() == [1, 3, 5, 9, 11, 13]


def test_whole_words_budget_and_80_10_10():
    ids, words, lengths = make_instances(3000)
    out = mask_instances(ids, words, lengths, instance_keys(7, 0, np.arange(len(lengths))), SPECIAL, MaskingConfig())
    starts = np.cumsum(lengths) - lengths
    where = np.repeat(starts, out.predictions) + out.positions
    masked = np.zeros(len(ids), bool)
    masked[where] = True
    assert not np.isin(ids[where], (SPECIAL.cls, SPECIAL.sep)).any()
    assert np.array_equal(out.labels, ids[where])
    # Every masked word is masked whole.
    instance = np.repeat(np.arange(len(lengths)), lengths)
    key = instance * 1000 + words
    masked_words = np.unique(key[masked])
    assert not np.isin(key[~masked & (words >= 0)], masked_words).any()
    # Budget: round(15%) of the tokens, at most 20; whole words never overshoot it.
    budget = np.minimum(20, np.maximum(1, np.rint(lengths * 0.15)))
    assert (out.predictions <= budget).all() and (out.predictions >= budget - 1).mean() > 0.95
    assert abs(out.predictions.sum() / lengths.sum() - 0.15) < 0.01
    # 80% [MASK], 10% random, 10% unchanged.
    new = out.input_ids[where]
    assert abs((new == SPECIAL.mask).mean() - 0.8) < 0.02
    assert abs((new == ids[where]).mean() - 0.1) < 0.02
    counts = out.counts
    assert counts["masked"] + counts["random"] + counts["unchanged"] == len(where)
    assert abs(counts["masked"] / len(where) - 0.8) < 0.02 and abs(counts["random"] / len(where) - 0.1) < 0.02
    assert out.counts["words_masked"] == len(masked_words)
    # Positions are sorted within each instance.
    for k in range(20):
        p = out.positions[out.predictions[:k].sum() : out.predictions[: k + 1].sum()]
        assert (np.diff(p) > 0).all()


def test_mask_of_an_instance_depends_on_its_key_only():
    ids, words, lengths = make_instances(50)
    keys = instance_keys(3, 1, np.arange(50))
    together = mask_instances(ids, words, lengths, keys, SPECIAL, MaskingConfig())
    starts = np.cumsum(lengths) - lengths
    for k in (0, 17, 49):
        row = slice(starts[k], starts[k] + lengths[k])
        alone = mask_instances(ids[row], words[row], lengths[k : k + 1], keys[k : k + 1], SPECIAL, MaskingConfig())
        assert np.array_equal(alone.input_ids, together.input_ids[row])
        first = together.predictions[:k].sum()
        assert np.array_equal(alone.positions, together.positions[first : first + together.predictions[k]])
    other = mask_instances(ids, words, lengths, instance_keys(3, 2, np.arange(50)), SPECIAL, MaskingConfig())
    assert not np.array_equal(other.input_ids, together.input_ids)


def test_random_order_of_words():
    # Over many keys each word of an instance is chosen about equally often.
    ids = np.asarray([2] + list(range(10, 30)) + [3])
    words = np.asarray([-1] + list(range(20)) + [-1])
    chosen = np.zeros(len(ids), int)
    for key in instance_keys(0, 0, np.arange(2000)):
        _, positions, _ = create_masked_lm_predictions(ids, words, int(key), SPECIAL, MaskingConfig())
        chosen[positions] += 1
        assert len(positions) == 3  # round(22 * 0.15)
    assert chosen[0] == chosen[-1] == 0
    assert chosen[1:-1].min() > 0.7 * chosen[1:-1].mean()


def test_long_words_are_skipped_not_cut():
    ids = np.asarray([2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 3, 20, 3])
    words = np.asarray([-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, 1, -1])  # a 10-token word, then a 1-token one
    for key in range(20):
        _, positions, _ = create_masked_lm_predictions(ids, words, key, SPECIAL, MaskingConfig())
        assert positions == [12]  # budget round(14 * .15) = 2: the long word never fits


def test_config_is_checked():
    with pytest.raises(ConfigError, match="masked-lm-prob"):
        MaskingConfig(masked_lm_prob=1.5)
    with pytest.raises(ConfigError, match="max-predictions-per-seq"):
        MaskingConfig(max_predictions_per_seq=0)


def test_vectorized_walk_is_berts_greedy_loop():
    """Given the same random order of candidates, the masked positions are those of BERT's loop."""
    from nezha_cli.pretraining.masking import _ORDER, _uniform

    ids, words, lengths = make_instances(400, seed=3, word_length=5)
    keys = instance_keys(11, 0, np.arange(len(lengths)))
    for config in (MaskingConfig(), MaskingConfig(max_predictions_per_seq=4), MaskingConfig(masked_lm_prob=0.4)):
        out = mask_instances(ids, words, lengths, keys, SPECIAL, config)
        start = chosen_start = 0
        for k, length in enumerate(lengths):
            row = slice(start, start + length)
            runs_start, runs_length = candidate_words(ids[row], words[row], np.asarray([0]), SPECIAL)
            u = _uniform(np.full(len(runs_start), keys[k]), runs_start + _ORDER)
            budget = min(config.max_predictions_per_seq, max(1, int(round(length * config.masked_lm_prob))))
            expected: list[int] = []
            for i in np.argsort(u):  # BERT: for index_set in shuffled candidates
                if len(expected) >= budget:
                    break
                if len(expected) + runs_length[i] > budget:
                    continue
                expected += range(runs_start[i], runs_start[i] + runs_length[i])
            got = out.positions[chosen_start : chosen_start + out.predictions[k]].tolist()
            assert got == sorted(expected), k
            start += length
            chosen_start += out.predictions[k]
