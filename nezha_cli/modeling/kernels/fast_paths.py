"""CPU fast paths of the model, kept out of the model file so that it reads like the paper.

Each is a device-specific way to compute exactly what the plain PyTorch code computes, taken only where it was
measured faster (the numbers are in each docstring and benchmarks/RESULTS.md) and never under torch.compile,
torch.export or tracing:

* :func:`tied_word_lookup`: the MLM decoder and the word-embedding lookup share one weight; on the CPU the lookup's
  gradient goes in sparse and is added in place into the decoder's (:func:`sparse_word_gradient`).
* :func:`keeps_every_key`: an attention mask without padding is not added to the scores (CPU, eager).
* :func:`gather_last`: the relative scores' gather through an int16 view for bf16/fp16 on the CPU.

The relative attention's own kernels (the bucket gather and sums, C and Triton) are in :mod:`.dispatch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from nezha_cli.modeling.modeling_nezha import NezhaPreTrainedModel


def sparse_word_gradient(weight: torch.Tensor) -> bool:
    """Whether the word-embedding lookup of a model whose MLM decoder shares ``weight`` may take the sparse path.

    The weight's gradient is the decoder's dense [V, H] product plus the lookup's. Left to autograd, a dense lookup
    gradient costs a zero-filled [V, H] tensor and a full add, and a sparse one is still added out of place (a fresh
    [V, H] copy: autograd adds a sparse gradient into a dense one in place only when the sparse one came first, and
    the decoder's always comes first). :class:`_TiedWordWeight` instead hands each use its own alias and adds the
    lookup's rows into the decoder's gradient in place: on a 2-core CPU these passes were about 8% of a
    BERT-base-width pretraining step at 512 tokens. ``.grad`` is dense as before, also when the decoder is not in
    the backward (a loss on the NSP head alone), so optimizers, clipping and DDP see what they always saw. CPU only
    (on a GPU those passes take microseconds; the sparse path is not measured there), for a plain leaf parameter
    under autograd, outside torch.compile/export (FSDP and DeepSpeed ZeRO-3 hand out views or placeholders).
    """
    return (weight.device.type == "cpu" and torch.is_grad_enabled() and isinstance(weight, nn.Parameter)
            and weight.requires_grad and weight.is_leaf
            and weight._base is None and weight.layout == torch.strided and not hasattr(weight, "ds_id")
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting())


class _TiedWordWeight(torch.autograd.Function):
    """Two aliases of the word-embedding weight shared with the MLM decoder: one for the lookup, one for the decoder.

    Their gradients meet in :meth:`backward`, which runs once both have arrived: the lookup's sparse rows are added
    into the decoder's dense gradient in place (see :func:`sparse_word_gradient`).
    """

    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight), weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_lookup, grad_decoder):
        # grad_lookup, when present, is the sparse gradient of the lookup (F.embedding(..., sparse=True)).
        if grad_lookup is None:
            return grad_decoder
        if grad_decoder is None:
            return grad_lookup.to_dense()
        # grad_decoder is the decoder's own fresh product, referenced nowhere else: safe to add into.
        return grad_decoder.index_add_(0, grad_lookup._indices()[0], grad_lookup._values())


def tied_word_lookup(model: NezhaPreTrainedModel, input_ids, inputs_embeds) -> tuple:
    """``(input_ids, inputs_embeds, decoder_weight)`` for a head with a tied MLM decoder, on the sparse path if it may.

    On that path the lookup is done here into ``inputs_embeds`` (``input_ids`` becomes None) and the decoder is to
    use the returned alias; otherwise the arguments come back unchanged with ``decoder_weight`` None.
    """
    embeddings = model.get_input_embeddings()
    weight = embeddings.weight
    if (input_ids is None or inputs_embeds is not None
            or model.get_output_embeddings().weight is not weight or not sparse_word_gradient(weight)):
        return input_ids, inputs_embeds, None
    lookup, decoder = _TiedWordWeight.apply(weight)
    return None, F.embedding(input_ids, lookup, embeddings.padding_idx, sparse=True), decoder


def keeps_every_key(attention_mask: torch.Tensor) -> bool:
    """Whether ``attention_mask`` masks nothing (no padding), checked on the CPU in eager mode only.

    Elsewhere the check would cost a device sync or a data-dependent branch in a compiled/exported graph.
    """
    return (attention_mask.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and not torch.jit.is_tracing() and bool(attention_mask.all()))


def gather_last(y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``y.gather(-1, index)``; for 2-byte floats on the CPU through an int16 view.

    A gather only moves bits: through an int16 view it takes a 2x faster CPU kernel than for bf16/fp16 (which also
    makes [L, L] temporaries). Not under torch.export, whose graph keeps the plain gather.
    """
    if y.device.type == "cpu" and y.element_size() == 2 and y.is_floating_point() and not torch.compiler.is_exporting():
        return y.view(torch.int16).gather(-1, index).view(y.dtype)
    return y.gather(-1, index)
