"""The NEZHA model family, with transformers' class, parameter and output names.

Reads top to bottom: outputs, embeddings, attention, layer, encoder, pooler, heads, then the models. Parameter
names match transformers' Nezha classes exactly so that checkpoints move between the two without translation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nezha_cli.modeling.configuration import NezhaConfig
from nezha_cli.modeling.crf import ConditionalRandomField
from nezha_cli.modeling.dropout import Dropout
from nezha_cli.modeling.relative_attention import (
    RelativePositions,
    relative_context,
    relative_position_table,
    relative_scores,
)

# ----------------------------------------------------------------------------------------------------- outputs


@dataclass
class ModelOutput:
    """Attribute access by name; ``output[0]`` and ``to_tuple()`` give the fields that are set, as transformers."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, index):
        if isinstance(index, str):
            return getattr(self, index)
        return self.to_tuple()[index]


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class NezhaForPreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    # The two parts of ``loss``, for logging (not in transformers' output).
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# Same fields; separate names so that code and reprs say what they hold, as in transformers.
MaskedLMOutput = SequenceClassifierOutput
NextSentencePredictorOutput = SequenceClassifierOutput
MultipleChoiceModelOutput = SequenceClassifierOutput
TokenClassifierOutput = SequenceClassifierOutput


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# ------------------------------------------------------------------------------------------------- activations


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACT2FN = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "mish": F.mish,
}


# ------------------------------------------------------------------------------------------------------ blocks


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


def tied_word_lookup(model: NezhaPreTrainedModel, input_ids, kwargs: dict) -> tuple:
    """``(input_ids, kwargs, decoder_weight)`` for a head with a tied MLM decoder, taking the sparse path if it may.

    On that path the lookup is done here into ``kwargs["inputs_embeds"]`` (``input_ids`` becomes None) and the
    decoder is to use the returned alias; otherwise the arguments come back unchanged with ``decoder_weight`` None.
    """
    embeddings = model.get_input_embeddings()
    weight = embeddings.weight
    if (input_ids is None or kwargs.get("inputs_embeds") is not None
            or model.get_output_embeddings().weight is not weight or not sparse_word_gradient(weight)):
        return input_ids, kwargs, None
    lookup, decoder = _TiedWordWeight.apply(weight)
    inputs_embeds = F.embedding(input_ids, lookup, embeddings.padding_idx, sparse=True)
    return None, {**kwargs, "inputs_embeds": inputs_embeds}, decoder


class NezhaEmbeddings(nn.Module):
    """Word + token type embeddings, LayerNorm, dropout. No absolute positions: order comes from the attention."""

    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:-1], dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class NezhaSelfAttention(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.attention_head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        # Benchmarks switch this off to measure what the relative terms cost; a released NEZHA always has them.
        self.use_relative_positions = True

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_attention_heads, self.attention_head_size)).transpose(1, 2)

    def forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False,
                query_states=None):
        # ``query_states``: the rows that ask (default: all of ``hidden_states``); keys and values are all rows.
        query_states = hidden_states if query_states is None else query_states
        # Scaling q first equals scaling the summed scores: (q.k + q.a) / sqrt(d) = (q / sqrt(d)).(k + a).
        query = self._split_heads(self.query(query_states)) / math.sqrt(self.attention_head_size)
        key = self._split_heads(self.key(hidden_states))
        value = self._split_heads(self.value(hidden_states))

        if self.use_relative_positions:
            scores = relative_scores(query, key, relative_table, positions)
        else:
            scores = torch.matmul(query, key.transpose(-1, -2))
        if attention_mask is not None:
            # In place where the dtypes agree: one [B, H, L, L] tensor fewer.
            scores = scores.add_(attention_mask) if scores.dtype == attention_mask.dtype else scores + attention_mask
        # The softmax in at least fp32, with or without a mask (transformers always adds its fp32 mask, which turns
        # bf16/fp16 scores into fp32; CPU autocast would otherwise run it in bf16).
        probs = self.dropout(torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)))
        if self.use_relative_positions:
            context = relative_context(probs, value, relative_table, positions)
        else:
            context = torch.matmul(probs.to(value.dtype), value)
        context = context.transpose(1, 2).flatten(-2)
        return context, (probs if output_attentions else None)


class NezhaSelfOutput(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class NezhaAttention(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.self = NezhaSelfAttention(config)
        self.output = NezhaSelfOutput(config)

    def forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False,
                query_states=None):
        context, probs = self.self(hidden_states, attention_mask, relative_table, positions, output_attentions,
                                   query_states)
        return self.output(context, hidden_states if query_states is None else query_states), probs


class NezhaIntermediate(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class NezhaOutput(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class NezhaLayer(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.attention = NezhaAttention(config)
        self.intermediate = NezhaIntermediate(config)
        self.output = NezhaOutput(config)

    def forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False,
                query_states=None):
        attention_output, probs = self.attention(
            hidden_states, attention_mask, relative_table, positions, output_attentions, query_states
        )
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, probs


def gather_positions(sequence_output: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """sequence_output[b, positions[b, p]] -> [B, P, H] (BERT's ``gather_indexes``)."""
    index = positions.unsqueeze(-1).expand(-1, -1, sequence_output.shape[-1])
    return torch.gather(sequence_output, 1, index)


class NezhaEncoder(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.layer = nn.ModuleList([NezhaLayer(config) for _ in range(config.num_hidden_layers)])
        self.max_relative_position = config.max_relative_position
        # One fixed table for all heads and layers; derived from the config, so not part of the state dict.
        self.register_buffer(
            "relative_positions_table",
            relative_position_table(config.max_relative_position, config.attention_head_size),
            persistent=False,
        )
        self.gradient_checkpointing = False

    def forward(self, hidden_states, attention_mask=None, output_attentions=False, output_hidden_states=False,
                output_positions=None):
        """``output_positions`` ([B, P]): the last layer computes only these rows (see NezhaModel.forward)."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        table = self.relative_positions_table
        # The bucket indices depend only on the length: built once, shared by all layers.
        positions = RelativePositions.build(hidden_states.shape[1], self.max_relative_position, hidden_states.device)
        last = len(self.layer) - 1
        for n, layer in enumerate(self.layer):
            mask, layer_positions, query_states = attention_mask, positions, None
            if n == last and output_positions is not None:
                # Nothing reads the other rows of the last layer: its keys and values need every position, but
                # its queries, attention output and feed-forward only the rows asked for.
                query_states = gather_positions(hidden_states, output_positions)
                layer_positions = positions.rows(output_positions)
                if mask is not None and mask.shape[-2] != 1:  # a per-query [B, 1, L, L] mask
                    mask = mask.gather(2, output_positions[:, None, :, None].expand(-1, 1, -1, mask.shape[-1]))
            if self.gradient_checkpointing and self.training:
                hidden_states, probs = checkpoint(
                    layer, hidden_states, mask, table, layer_positions, output_attentions, query_states,
                    use_reentrant=False,
                )
            else:
                hidden_states, probs = layer(hidden_states, mask, table, layer_positions, output_attentions,
                                             query_states)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
            if output_attentions:
                all_attentions = all_attentions + (probs,)
        return hidden_states, all_hidden_states, all_attentions


class NezhaPooler(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class NezhaPredictionHeadTransform(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class NezhaLMPredictionHead(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.transform = NezhaPredictionHeadTransform(config)
        # The decoder weight is tied to the word embeddings (set by the model); the bias is an output-only bias,
        # shared with decoder.bias as in transformers so that both names load.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden_states, decoder_weight=None):
        # ``decoder_weight``: an alias of decoder.weight given by the model (see tied_word_lookup).
        hidden_states = self.transform(hidden_states)
        if decoder_weight is None:
            return self.decoder(hidden_states)
        return F.linear(hidden_states, decoder_weight, self.decoder.bias)


class NezhaOnlyMLMHead(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.predictions = NezhaLMPredictionHead(config)

    def forward(self, sequence_output, decoder_weight=None):
        return self.predictions(sequence_output, decoder_weight)


class NezhaOnlyNSPHead(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled_output):
        return self.seq_relationship(pooled_output)


class NezhaPreTrainingHeads(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.predictions = NezhaLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output, decoder_weight=None):
        return self.predictions(sequence_output, decoder_weight), self.seq_relationship(pooled_output)


# ------------------------------------------------------------------------------------------------------ models


class NezhaPreTrainedModel(nn.Module):
    """Weight init, tying, gradient checkpointing and ``save_pretrained``/``from_pretrained``."""

    base_model_prefix = "nezha"
    # Names of parameters that are aliases of other parameters (not written; restored by tying).
    _tied_weights_keys: tuple[str, ...] = ()

    def __init__(self, config: NezhaConfig):
        super().__init__()
        if not isinstance(config, NezhaConfig):
            raise TypeError(f"config must be a NezhaConfig, got {type(config).__name__}")
        self.config = config

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, NezhaLMPredictionHead):
            module.bias.data.zero_()

    def tie_weights(self) -> None:
        head = self.get_output_embeddings()
        if head is not None:
            head.weight = self.get_input_embeddings().weight
            head.bias = self._mlm_head().bias

    def _mlm_head(self) -> NezhaLMPredictionHead | None:
        cls = getattr(self, "cls", None)
        return getattr(cls, "predictions", None)

    def get_input_embeddings(self) -> nn.Embedding:
        base = getattr(self, self.base_model_prefix, self)
        return base.embeddings.word_embeddings

    def get_output_embeddings(self) -> nn.Linear | None:
        head = self._mlm_head()
        return head.decoder if head is not None else None

    def gradient_checkpointing_enable(self) -> None:
        for module in self.modules():
            if isinstance(module, NezhaEncoder):
                module.gradient_checkpointing = True

    def num_parameters(self, trainable_only: bool = False) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def save_pretrained(self, directory: str | Path, **kwargs) -> None:
        from nezha_cli.modeling.checkpoint import save_pretrained

        save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: NezhaConfig | None = None, **kwargs):
        from nezha_cli.modeling.checkpoint import from_pretrained

        return from_pretrained(cls, directory, config=config, **kwargs)


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] (1 = keep) or [B, L, L] -> additive mask broadcastable to [B, H, L, L], as transformers builds it."""
    if attention_mask.dim() == 2:
        mask = attention_mask[:, None, None, :]
    elif attention_mask.dim() == 3:
        mask = attention_mask[:, None, :, :]
    else:
        raise ValueError(f"attention_mask must have 2 or 3 dimensions, got shape {tuple(attention_mask.shape)}")
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


class NezhaModel(NezhaPreTrainedModel):
    def __init__(self, config: NezhaConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = NezhaEmbeddings(config)
        self.encoder = NezhaEncoder(config)
        self.pooler = NezhaPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        output_positions: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """``output_positions`` ([B, P] long; not in transformers): compute the last layer only where a head reads.

        ``last_hidden_state`` is then [B, P, H], equal to the full one gathered at those positions, and
        ``pooler_output`` is unchanged ([CLS] is always computed). The last layer's queries, attention output and
        feed-forward run on P + 1 rows instead of L. If asked for, the last entries of ``hidden_states`` and
        ``attentions`` hold the rows of [CLS] and then those positions.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if (input_ids if input_ids is not None else inputs_embeds).shape[1] == 0:
            # Caught here: further in, the attention's reshapes fail with an error that names no input.
            raise ValueError("the input has no tokens (sequence length 0): give each input at least one token "
                             "(tokenized inputs start with [CLS])")
        embedding_output = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        mask = None
        if attention_mask is not None:
            mask = extended_attention_mask(attention_mask, embedding_output.dtype)
            if _keeps_every_key(attention_mask):
                mask = None  # adding zeros: a pass over every layer's scores for nothing
        rows = None
        if output_positions is not None:
            rows = torch.cat([output_positions.new_zeros(output_positions.shape[0], 1), output_positions], dim=1)
        # torch.export (ONNX) takes the full last layer: its shape-agnostic bucket sums are written for all rows.
        sparse = rows is not None and not torch.compiler.is_exporting()
        sequence_output, hidden_states, attentions = self.encoder(
            embedding_output, mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            output_positions=rows if sparse else None,
        )
        if rows is not None and not sparse:
            sequence_output = gather_positions(sequence_output, rows)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None  # row 0 is [CLS]
        if rows is not None:
            sequence_output = sequence_output[:, 1:]
        return BaseModelOutputWithPooling(sequence_output, pooled_output, hidden_states, attentions)


def _keeps_every_key(attention_mask: torch.Tensor) -> bool:
    """Whether ``attention_mask`` masks nothing (no padding), checked on the CPU in eager mode only.

    Elsewhere the check would cost a device sync or a data-dependent branch in a compiled/exported graph.
    """
    return (attention_mask.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and bool(attention_mask.all()))


def _body_kwargs(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in ("attention_mask", "token_type_ids", "inputs_embeds", "output_attentions",
                                   "output_hidden_states") if k in kwargs}


def _last_layer_rows(kwargs: dict, positions: torch.Tensor | None) -> dict:
    """``output_positions`` for a head that reads only ``positions`` (or only [CLS]: ``positions`` [B, 0]).

    Not when per-layer outputs are asked for: those keep the full shape, as in transformers.
    """
    if positions is None or kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
        return {}
    return {"output_positions": positions}


def _pooled_body_kwargs(input_ids: torch.Tensor | None, kwargs: dict) -> dict:
    """Body arguments for a head that reads the pooled [CLS] row alone (no other rows of the last layer)."""
    ref = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
    if ref is None:
        return _body_kwargs(kwargs)  # NezhaModel says what is missing
    cls_only = torch.zeros(ref.shape[0], 0, dtype=torch.long, device=ref.device)
    return {**_body_kwargs(kwargs), **_last_layer_rows(kwargs, cls_only)}


class NezhaForPreTraining(NezhaPreTrainedModel):
    """MLM + NSP heads.

    Pass ``masked_lm_positions`` ([B, P], as written by ``nezha mask``) to score only those positions against the
    vocabulary: ``prediction_logits`` is then [B, P, V] and ``labels`` [B, P] (-100 for padding). Without it the
    whole sequence is scored, as in transformers. Both give the same loss; with the positions, the last layer also
    runs its queries and feed-forward on [CLS] and those rows alone (unless per-layer outputs are asked for).
    """

    _tied_weights_keys = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config)
        self.cls = NezhaPreTrainingHeads(config)
        self.post_init()

    def forward(self, input_ids=None, labels=None, next_sentence_label=None, masked_lm_positions=None, **kwargs):
        rows = _last_layer_rows(kwargs, masked_lm_positions)
        input_ids, body, decoder_weight = tied_word_lookup(self, input_ids, _body_kwargs(kwargs))
        outputs = self.nezha(input_ids, **body, **rows)
        sequence_output = outputs.last_hidden_state
        if masked_lm_positions is not None and not rows:
            sequence_output = gather_positions(sequence_output, masked_lm_positions)
        prediction_scores, seq_relationship_score = self.cls(sequence_output, outputs.pooler_output, decoder_weight)

        loss = mlm_loss = nsp_loss = None
        if labels is not None:
            logits = prediction_scores.reshape(-1, self.config.vocab_size).float()
            mlm_loss = F.cross_entropy(logits, labels.reshape(-1))
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(seq_relationship_score.view(-1, 2).float(), next_sentence_label.view(-1))
        if mlm_loss is not None and nsp_loss is not None:
            loss = mlm_loss + nsp_loss
        return NezhaForPreTrainingOutput(loss, prediction_scores, seq_relationship_score, outputs.hidden_states,
                                         outputs.attentions, mlm_loss, nsp_loss)


class NezhaForMaskedLM(NezhaPreTrainedModel):
    _tied_weights_keys = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.cls = NezhaOnlyMLMHead(config)
        self.post_init()

    def forward(self, input_ids=None, labels=None, **kwargs):
        input_ids, body, decoder_weight = tied_word_lookup(self, input_ids, _body_kwargs(kwargs))
        outputs = self.nezha(input_ids, **body)
        prediction_scores = self.cls(outputs.last_hidden_state, decoder_weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(prediction_scores.view(-1, self.config.vocab_size).float(), labels.view(-1))
        return MaskedLMOutput(loss, prediction_scores, outputs.hidden_states, outputs.attentions)


class NezhaForNextSentencePrediction(NezhaPreTrainedModel):
    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config)
        self.cls = NezhaOnlyNSPHead(config)
        self.post_init()

    def forward(self, input_ids=None, labels=None, next_sentence_label=None, **kwargs):
        labels = labels if labels is not None else next_sentence_label
        outputs = self.nezha(input_ids, **_pooled_body_kwargs(input_ids, kwargs))
        logits = self.cls(outputs.pooler_output)
        loss = None if labels is None else F.cross_entropy(logits.view(-1, 2).float(), labels.view(-1))
        return NextSentencePredictorOutput(loss, logits, outputs.hidden_states, outputs.attentions)


def _classifier_dropout(config: NezhaConfig) -> Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return Dropout(p)


class NezhaForSequenceClassification(NezhaPreTrainedModel):
    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nezha = NezhaModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, labels=None, **kwargs):
        outputs = self.nezha(input_ids, **_pooled_body_kwargs(input_ids, kwargs))
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(loss, logits, outputs.hidden_states, outputs.attentions)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Same rules as transformers: 1 label = regression, integer labels = single-label, else multi-label.
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        logits = logits.float()
        if problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().float())
            return F.mse_loss(logits, labels.float())
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.float())


class NezhaForMultipleChoice(NezhaPreTrainedModel):
    """Inputs are [B, num_choices, L]; logits [B, num_choices]."""

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, labels=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                **kwargs):
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        def flat(x):
            return None if x is None else x.reshape(-1, *x.shape[2:])

        input_ids = flat(input_ids)
        body = {**kwargs, "attention_mask": flat(attention_mask), "token_type_ids": flat(token_type_ids),
                "inputs_embeds": flat(inputs_embeds)}
        outputs = self.nezha(input_ids, **_pooled_body_kwargs(input_ids, body))
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return MultipleChoiceModelOutput(loss, logits, outputs.hidden_states, outputs.attentions)


class NezhaForTokenClassification(NezhaPreTrainedModel):
    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        # With use_crf the logits are a CRF's emission scores: the loss is the CRF's and so is the decoding.
        self.crf = ConditionalRandomField(config.num_labels) if config.use_crf else None
        # With word_features, one learnt vector per word feature id (nezha_cli.text.word_features) is added to
        # the token embeddings; id 0 ([CLS], [SEP], padding) adds nothing.
        self.word_feature_embeddings = None
        if config.word_features is not None:
            from nezha_cli.text.word_features import PAD_ID, num_word_features

            self.word_feature_embeddings = nn.Embedding(num_word_features(config.word_features), config.hidden_size,
                                                        padding_idx=PAD_ID)
        self.post_init()

    def forward(self, input_ids=None, labels=None, word_feature_ids=None, **kwargs):
        body_kwargs = _body_kwargs(kwargs)
        if self.word_feature_embeddings is not None:
            if word_feature_ids is None or input_ids is None:
                raise ValueError(f"this tagger was fine-tuned with word features ({self.config.word_features}): "
                                 "pass input_ids and word_feature_ids")
            body_kwargs["inputs_embeds"] = (self.nezha.embeddings.word_embeddings(input_ids)
                                            + self.word_feature_embeddings(word_feature_ids))
            input_ids = None
        outputs = self.nezha(input_ids, **body_kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None and self.crf is not None:
            loss = self.crf(logits, labels)
        elif labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return TokenClassifierOutput(loss, logits, outputs.hidden_states, outputs.attentions)


class NezhaForQuestionAnswering(NezhaPreTrainedModel):
    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, start_positions=None, end_positions=None, **kwargs):
        outputs = self.nezha(input_ids, **_body_kwargs(kwargs))
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the window (answer not in this span) are ignored, as in transformers.
            ignored = start_logits.shape[1]
            start = start_positions.view(-1).clamp(0, ignored)
            end = end_positions.view(-1).clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
                + F.cross_entropy(end_logits.float(), end, ignore_index=ignored)
            ) / 2
        return QuestionAnsweringModelOutput(loss, start_logits, end_logits, outputs.hidden_states, outputs.attentions)


MODEL_CLASSES: dict[str, type[NezhaPreTrainedModel]] = {
    cls.__name__: cls
    for cls in (
        NezhaModel,
        NezhaForPreTraining,
        NezhaForMaskedLM,
        NezhaForNextSentencePrediction,
        NezhaForSequenceClassification,
        NezhaForMultipleChoice,
        NezhaForTokenClassification,
        NezhaForQuestionAnswering,
    )
}
