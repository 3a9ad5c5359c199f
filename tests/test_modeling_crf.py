"""The CRF tagger head: likelihood and Viterbi decoding against enumeration of every tag sequence, the model with
``use_crf``, its checkpoints, and the learning rate of its transitions."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from nezha_cli.engine import param_groups
from nezha_cli.modeling import NezhaConfig, NezhaForTokenClassification
from nezha_cli.modeling.crf import ConditionalRandomField, pack_labelled
from nezha_cli.tasks.token_classification import decode_tags

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def random_crf(num_tags: int, seed: int = 0) -> ConditionalRandomField:
    crf = ConditionalRandomField(num_tags)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in crf.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return crf


def path_score(crf, emissions: torch.Tensor, tags) -> torch.Tensor:
    score = crf.start_transitions[tags[0]] + crf.end_transitions[tags[-1]]
    score = score + sum(emissions[t, tag] for t, tag in enumerate(tags))
    return score + sum(crf.transitions[a, b] for a, b in zip(tags, tags[1:]))


def brute_force_nll(crf, emissions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: log of the sum over every tag sequence of the labelled positions, minus the gold sequence."""
    total, tokens = 0.0, 0
    for row, row_labels in zip(emissions, labels):
        keep = row_labels != -100
        if not keep.any():
            continue
        e, gold = row[keep], row_labels[keep].tolist()
        scores = torch.stack([path_score(crf, e, seq) for seq in itertools.product(range(e.shape[1]),
                                                                                    repeat=len(gold))])
        total = total + torch.logsumexp(scores, 0) - path_score(crf, e, gold)
        tokens += len(gold)
    return total / tokens


@pytest.mark.parametrize("pairwise", [False, True])
def test_likelihood_equals_enumeration_with_ignored_positions(pairwise):
    """Both paths: the CPU's (rows trimmed to the longest labelled one) and the GPU's (all L positions, rows without
    a label multiplied out: nothing read back to the host)."""
    crf = random_crf(3)
    torch.manual_seed(0)
    emissions = torch.randn(3, 6, 3)
    # -100: [CLS]/[SEP], a word's further WordPiece token, padding; the last row has no label at all.
    labels = torch.tensor([[-100, 0, 2, -100, 1, -100],
                           [-100, 1, 1, 0, 2, -100],
                           [-100, -100, -100, -100, -100, -100]])
    loss = crf(emissions, labels, pairwise=pairwise)
    assert loss.item() == pytest.approx(brute_force_nll(crf, emissions, labels).item(), abs=1e-5)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crf.parameters())
    # Nothing labelled at all: zero loss, still connected to the graph.
    crf.zero_grad()
    empty = crf(emissions.requires_grad_(), torch.full((3, 6), -100), pairwise=pairwise)
    assert empty.item() == 0.0
    empty.backward()
    assert all(p.grad is not None for p in crf.parameters()) and emissions.grad is not None


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13])
def test_pairwise_forward_algorithm_equals_the_sequential_one(length):
    """The GPU's tree of pairwise products gives the CPU's step-by-step log-partition, values and gradients,
    with rows that end early (their last positions are the identity) and against enumeration."""
    crf = random_crf(4, seed=length)
    emissions = torch.randn(3, length, 4, generator=torch.Generator().manual_seed(length), requires_grad=True)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, max(1, length - 2):] = False
    mask[2, 1:] = False
    results = []
    for pairwise in (False, True):
        crf.zero_grad()
        emissions.grad = None
        value = crf._log_partition(emissions, mask, pairwise=pairwise)
        value.sum().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in crf.parameters()]
        results.append((value.detach(), emissions.grad.clone(), grads))
    (v0, g0, p0), (v1, g1, p1) = results
    assert torch.allclose(v0, v1, atol=1e-5)
    assert torch.isfinite(g1).all() and torch.allclose(g0, g1, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(p0, p1))
    if length <= 5:
        for row in range(3):
            e = emissions[row, mask[row]].detach()
            every = torch.stack([path_score(crf, e, seq) for seq in itertools.product(range(4), repeat=len(e))])
            assert v1[row].item() == pytest.approx(torch.logsumexp(every, 0).item(), abs=1e-5)


def test_pack_labelled_keeps_order_and_marks_a_prefix():
    emissions = torch.arange(12.0).view(2, 3, 2)
    labels = torch.tensor([[-100, 1, 0], [1, -100, -100]])
    packed, tags, mask = pack_labelled(emissions, labels)
    assert packed.tolist() == [[[2, 3], [4, 5]], [[6, 7], [8, 9]]]
    assert tags.tolist() == [[1, 0], [1, 0]] and mask.tolist() == [[True, True], [True, False]]
    packed, tags, mask = pack_labelled(emissions, labels, trim=False)
    assert packed[:, :2].tolist() == [[[2, 3], [4, 5]], [[6, 7], [8, 9]]] and packed.shape == (2, 3, 2)
    assert mask.tolist() == [[True, True, False], [True, False, False]]


def test_viterbi_finds_the_best_valid_sequence():
    crf = random_crf(len(LABELS), seed=1).numpy_transitions()
    rng = np.random.default_rng(0)
    valid = lambda seq: all(  # noqa: E731
        not LABELS[b].startswith("I-") or LABELS[a][2:] == LABELS[b][2:] and a != 0
        for a, b in zip((0, *seq), seq))  # a sentence starts after an implicit O

    def score(logits, seq):
        return (crf.start[seq[0]] + crf.end[seq[-1]] + sum(logits[t, s] for t, s in enumerate(seq))
                + sum(crf.transitions[a, b] for a, b in zip(seq, seq[1:])))

    for _ in range(20):
        logits = rng.normal(size=(4, len(LABELS))).astype(np.float32) * 2
        best = max((seq for seq in itertools.product(range(len(LABELS)), repeat=4) if valid(seq)),
                   key=lambda seq: score(logits, seq))  # noqa: B023 (used at once)
        assert decode_tags(logits, dict(enumerate(LABELS)), crf) == [LABELS[i] for i in best]


def tiny_config(**kwargs) -> NezhaConfig:
    return NezhaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, id2label=dict(enumerate(LABELS)), **kwargs)


def test_token_classifier_with_crf_trains_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = NezhaForTokenClassification(tiny_config(use_crf=True)).eval()
    input_ids = torch.randint(5, 50, (2, 7))
    labels = torch.tensor([[-100, 1, 2, 0, 3, 4, -100], [-100, 0, 0, 1, -100, -100, -100]])
    # With its initial zero transitions the CRF's loss is the token-level cross-entropy (same normalisation).
    out = model(input_ids, labels=labels)
    assert out.loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(out.logits.view(-1, 5), labels.view(-1)).item(), abs=1e-6)
    model.crf.load_state_dict(random_crf(len(LABELS)).state_dict())
    out = model(input_ids, labels=labels)
    assert out.loss.item() == pytest.approx(model.crf(out.logits, labels).item())
    assert out.loss.item() != pytest.approx(
        torch.nn.functional.cross_entropy(out.logits.view(-1, 5), labels.view(-1)).item())
    out.loss.backward()
    assert model.crf.transitions.grad is not None and model.classifier.weight.grad is not None

    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text(encoding="utf-8"))["use_crf"] is True
    loaded = NezhaForTokenClassification.from_pretrained(tmp_path / "m", strict=True)
    assert torch.equal(loaded.crf.transitions, model.crf.transitions)
    # Without use_crf nothing changes: no CRF, no key in config.json, cross-entropy.
    plain = NezhaForTokenClassification(tiny_config())
    plain.save_pretrained(tmp_path / "p")
    assert plain.crf is None and "use_crf" not in (tmp_path / "p" / "config.json").read_text(encoding="utf-8")


def test_crf_parameters_get_their_own_learning_rate():
    model = NezhaForTokenClassification(tiny_config(use_crf=True))
    groups = param_groups(model, 0.01, {"crf.": 1e-2})
    crf_params = {id(p) for p in model.crf.parameters()}
    crf_groups = [g for g in groups if any(id(p) in crf_params for p in g["params"])]
    assert all(g["lr"] == 1e-2 for g in crf_groups)
    assert {id(p) for g in crf_groups for p in g["params"]} == crf_params
    assert all("lr" not in g for g in groups if g not in crf_groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
