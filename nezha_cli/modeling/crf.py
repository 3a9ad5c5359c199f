"""A linear-chain conditional random field over token tags (Lafferty et al., 2001), the "CRF" of BERT-CRF taggers.

The tagger's logits are the emission scores; the CRF adds a learned score for each pair of adjacent tags and for the
first and last tag, trains on the log-likelihood of the whole gold sequence, and decodes the best whole sequence
(Viterbi). UER-py offers it for NER as ``--crf_target``. Parameter names follow pytorch-crf (``transitions[i, j]``:
tag i followed by tag j; ``start_transitions``, ``end_transitions``), as most BERT-CRF checkpoints have them.

Only the positions that carry a label take part: [CLS], [SEP], padding and the further WordPiece tokens of a word
(label -100) are skipped, as if the labelled tokens of each row stood next to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

IGNORE_INDEX = -100  # the label of positions without one, as in cross_entropy
LOG_ZERO = -1e9


def pack_labelled(emissions: torch.Tensor, labels: torch.Tensor, trim: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The labelled positions of each row moved to its front, in order: (emissions [B, T, C], tags [B, T],
    mask [B, T]); ``mask`` marks the real ones (a prefix of each row). T is the most labelled positions of a row
    with ``trim`` (which reads that number back from the device), else L."""
    labelled = labels != IGNORE_INDEX
    # A stable sort on "is ignored" keeps the labelled positions in order and puts them first.
    order = torch.sort((~labelled).to(torch.int8), dim=1, stable=True).indices
    if trim:
        order = order[:, :max(int(labelled.sum(1).max()), 1)]
    packed = emissions.gather(1, order.unsqueeze(-1).expand(-1, -1, emissions.shape[-1]))
    tags = labels.gather(1, order).clamp(min=0)
    return packed, tags, labelled.gather(1, order)


class ConditionalRandomField(nn.Module):
    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero: the untrained CRF decodes like the per-token scores alone. (Also what the model's weight init calls
        for a CRF a checkpoint lacks: transformers' loaders build models without running constructors' init.)"""
        for parameter in (self.start_transitions, self.end_transitions, self.transitions):
            parameter.data.zero_()

    def forward(self, emissions: torch.Tensor, labels: torch.Tensor, pairwise: bool | None = None) -> torch.Tensor:
        """Negative log-likelihood of the gold tag sequences, summed over rows and divided by the number of
        labelled tokens (the scale of token-level cross-entropy, so learning rates carry over); [B, L, C] scores and
        [B, L] labels (-100: no label). Rows without a label add zero (still connected to the graph: DDP expects
        a gradient for every parameter). ``pairwise``: see :meth:`_log_partition`.

        On the pairwise (GPU) path nothing is read back to the host: the rows keep all L positions and rows
        without a label are multiplied out rather than dropped (each read-back would stall the GPU's queue).
        """
        if pairwise is None:
            pairwise = emissions.device.type != "cpu"
        # The step-by-step (CPU) path takes one step per position: trimmed to the longest labelled row.
        emissions, tags, mask = pack_labelled(emissions.float(), labels, trim=not pairwise)
        nll = self._log_partition(emissions, mask, pairwise) - self._path_score(emissions, tags, mask)
        return (nll * mask[:, 0]).sum() / mask.sum().clamp(min=1)

    def _path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        maskf = mask.to(emissions.dtype)
        score = self.start_transitions[tags[:, 0]]
        score = score + (emissions.gather(-1, tags.unsqueeze(-1)).squeeze(-1) * maskf).sum(1)
        score = score + (self.transitions[tags[:, :-1], tags[:, 1:]] * maskf[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
        return score + self.end_transitions[last]

    def _log_partition(self, emissions: torch.Tensor, mask: torch.Tensor, pairwise: bool | None = None
                       ) -> torch.Tensor:
        """log of the summed exp-scores of every tag sequence per row (the forward algorithm).

        alpha_T = alpha_0 (x) M_1 (x) ... (x) M_{T-1} in the (logsumexp, +) semiring, with M_t[i, j] =
        transitions[i, j] + emissions[t, j] (the identity where position t is not real). On a CPU the vector
        alpha goes through the T - 1 steps in turn: each step is a few small ops, which a CPU runs cheaply. On a GPU
        each of them is a kernel launch (forward and backward), so the T - 1 sequential steps made a BERT-base
        training step at 128 tokens 70% slower (H200, benchmarks/bench_crf.py): there the product, being
        associative, is taken as a tree of log2(T) rounds over all adjacent pairs at once, at C^3 work per pair
        (C = 7 for PER/LOC/ORG; on a CPU that work made it 2x slower than the steps). ``pairwise`` forces one or
        the other.
        """
        alpha = self.start_transitions + emissions[:, 0]  # [B, C]: log-sum of all paths ending in each tag
        if pairwise is None:
            pairwise = emissions.device.type != "cpu"
        if not pairwise:
            for t in range(1, emissions.shape[1]):
                step = torch.logsumexp(alpha.unsqueeze(2) + self.transitions, dim=1) + emissions[:, t]
                alpha = torch.where(mask[:, t:t + 1], step, alpha)
        elif emissions.shape[1] > 1:
            alpha = torch.logsumexp(alpha.unsqueeze(2) + self._steps_product(emissions, mask), dim=1)
        return torch.logsumexp(alpha + self.end_transitions, dim=1)

    def _steps_product(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """M_1 (x) ... (x) M_{T-1}: [B, C, C], multiplied pairwise level by level."""
        steps = self.transitions + emissions[:, 1:].unsqueeze(2)  # [B, T - 1, C (previous), C (next)]
        identity = self._identity(emissions)
        steps = torch.where(mask[:, 1:, None, None], steps, identity)
        while steps.shape[1] > 1:
            if steps.shape[1] % 2:
                steps = torch.cat([steps, identity.expand(len(steps), 1, -1, -1)], dim=1)
            steps = _log_matmul(steps[:, 0::2], steps[:, 1::2])
        return steps[:, 0]

    def _identity(self, emissions: torch.Tensor) -> torch.Tensor:
        # A large finite "log 0" off the diagonal: -inf would give NaN gradients where a whole logsumexp is -inf
        # (identity times identity); exp(-1e9) is exactly 0 and sums of T such entries stay finite in fp32.
        identity = torch.full((self.num_tags, self.num_tags), LOG_ZERO, dtype=emissions.dtype,
                              device=emissions.device)
        return identity.fill_diagonal_(0.0)

    def numpy_transitions(self) -> CrfTransitions:
        return CrfTransitions(*(p.detach().float().cpu().numpy()
                                for p in (self.start_transitions, self.transitions, self.end_transitions)))


def _log_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[..., C, C] x [..., C, C] in the (logsumexp, +) semiring: out[i, k] = logsumexp_j a[i, j] + b[j, k]."""
    return torch.logsumexp(a.unsqueeze(-1) + b.unsqueeze(-3), dim=-2)


def model_crf(model: nn.Module) -> ConditionalRandomField | None:
    """The CRF of a tagger fine-tuned with one (``NezhaForTokenClassification`` with ``use_crf``), else None."""
    crf = getattr(model, "crf", None)
    return crf if isinstance(crf, ConditionalRandomField) else None


@dataclass(frozen=True)
class CrfTransitions:
    """A trained CRF's scores as arrays, for decoding outside the model (the task's post-processing)."""

    start: np.ndarray  # [C]
    transitions: np.ndarray  # [C, C]: previous tag, next tag
    end: np.ndarray  # [C]
