"""The NEZHA model family, with transformers' class, parameter and output names.

Reads top to bottom: outputs, embeddings, attention, layer, encoder, pooler, heads, then the models. Parameter
names match transformers' Nezha classes exactly so that checkpoints move between the two without translation.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nezha_cli.modeling.checkpoint import from_pretrained, save_pretrained
from nezha_cli.modeling.configuration import NezhaConfig, check_attn_implementation
from nezha_cli.modeling.crf import ConditionalRandomField
from nezha_cli.modeling.kernels import fast_paths
from nezha_cli.modeling.kernels.dispatch import attention_path
from nezha_cli.modeling.kernels.dropout import Dropout
from nezha_cli.modeling.kernels.frpe import fused_attention, sdpa_attention
from nezha_cli.modeling.relative_attention import (
    RelativePositions,
    relative_context,
    relative_position_table,
    relative_scores,
)

# ----------------------------------------------------------------------------------------------------- outputs


class ModelOutput(OrderedDict):
    """A model output as transformers' ``ModelOutput``: a dataclass that is also an ordered dict of its set fields.

    ``out.logits``, ``out["logits"]`` and ``out[0]`` all work; keys, ``len``, iteration and ``to_tuple()`` hold the
    fields that are not None, in declaration order, which is also what ``return_dict=False`` returns. Built from a
    mapping, or from (name, value) pairs, as only argument, those become the fields: accelerate rebuilds the outputs
    it converts to fp32 from a mapping, and ``nn.DataParallel`` (transformers' Trainer on several GPUs in one
    process) gathers them as ``type(out)((name, value) for name in out)``.
    """

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self)]
        first = getattr(self, names[0])
        def field_pair(x) -> bool:
            return isinstance(x, tuple) and len(x) == 2 and x[0] in names

        items = None
        if all(getattr(self, n) is None for n in names[1:]):
            if isinstance(first, Mapping):
                items = list(first.items())
            elif isinstance(first, Iterator):
                items = list(first)
                if not all(map(field_pair, items)):
                    raise TypeError(f"{type(self).__name__}: an iterator as only argument must give (field name, "
                                    f"value) pairs of {', '.join(names)}")
            elif isinstance(first, (list, tuple)) and first and all(map(field_pair, first)):
                items = list(first)
        if items is not None:
            object.__setattr__(self, names[0], None)
            for key, value in items:
                if value is not None:
                    self[key] = value
            return
        for name in names:
            value = getattr(self, name)
            if value is not None:
                super().__setitem__(name, value)

    def __setattr__(self, name, value) -> None:
        # As transformers: a field that is already a key stays in step; others become keys only in __post_init__.
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __delitem__(self, key) -> None:
        raise TypeError(f"{type(self).__name__} fields cannot be deleted; set them to None")

    def pop(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} fields cannot be popped")

    def setdefault(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} fields cannot be set with setdefault")

    def update(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} fields cannot be updated in bulk; set them one by one")

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


@dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    past_key_values: tuple | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


BaseModelOutputWithPooling = BaseModelOutputWithPoolingAndCrossAttentions


@dataclass
class NezhaForPreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# Same fields; separate names so that code and reprs say what they hold, as in transformers.
@dataclass
class SequenceClassifierOutput(MaskedLMOutput):
    pass


@dataclass
class NextSentencePredictorOutput(MaskedLMOutput):
    pass


@dataclass
class MultipleChoiceModelOutput(MaskedLMOutput):
    pass


@dataclass
class TokenClassifierOutput(MaskedLMOutput):
    pass


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
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.max_relative_position = config.max_relative_position
        # Benchmarks switch this off to measure what the relative terms cost; a released NEZHA always has them.
        self.use_relative_positions = True
        self.attn_implementation = config.attn_implementation

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_attention_heads, self.attention_head_size)).transpose(1, 2)

    def forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False,
                query_states=None, head_mask=None, key_valid=None):
        """``hidden_states`` give the keys and values, ``query_states`` (default: the same rows) the queries.

        Cross-attention passes the encoder's states as ``hidden_states``: the relative position of query i and key j
        is then j - i across the two sequences, as in transformers' Nezha (which needs equal lengths).
        ``head_mask`` ([1 or B, H, 1, 1], 0 = drop) multiplies the dropped-out probabilities, as in transformers.
        ``key_valid`` ([B, L] bool): ``attention_mask`` as a key padding mask, where it is one; with it (or with no
        mask) the whole attention may be one fused call (kernels.dispatch.attention_path).
        """
        query_states = hidden_states if query_states is None else query_states
        # Scaling q first equals scaling the summed scores: (q.k + q.a) / sqrt(d) = (q / sqrt(d)).(k + a).
        query = self._split_heads(self.query(query_states)) / math.sqrt(self.attention_head_size)
        key = self._split_heads(self.key(hidden_states))
        value = self._split_heads(self.value(hidden_states))

        path = "eager"
        if self.use_relative_positions:
            path = attention_path(self.attn_implementation, query, key.shape[-2], self.max_relative_position,
                                  plain_mask=attention_mask is None or key_valid is not None,
                                  output_attentions=output_attentions, head_mask=head_mask)
        if path != "eager":
            dropout_p = self.dropout.p if self.training else 0.0
            if path == "fused":
                context = fused_attention(query, key, value, key_valid, positions.query_positions,
                                          self.max_relative_position, dropout_p=dropout_p)
            else:
                # In the query's dtype, as SDPA wants it (the model's mask is in the embeddings' dtype).
                mask = None if key_valid is None else extended_attention_mask(key_valid, query.dtype)
                context = sdpa_attention(query, key, value, mask, self.max_relative_position, dropout_p,
                                         query_positions=positions.query_positions)
            return context.transpose(1, 2).flatten(-2), None
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
        if head_mask is not None:
            probs = probs * head_mask
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


def _prune_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A copy of ``layer`` that keeps only the rows (dim 0: outputs) or columns (dim 1: inputs) in ``index``."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = None if layer.bias is None else (layer.bias if dim == 1 else layer.bias[index]).detach().clone()
    size = list(layer.weight.shape)
    size[dim] = len(index)
    new = nn.Linear(size[1], size[0], bias=bias is not None).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


class NezhaAttention(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.self = NezhaSelfAttention(config)
        self.output = NezhaSelfOutput(config)
        self.pruned_heads: set[int] = set()

    def prune_heads(self, heads) -> None:
        """Remove attention heads (numbered as in the unpruned layer) from the projections and the output dense."""
        heads = set(heads) - self.pruned_heads
        if not heads:
            return
        size = self.self.attention_head_size
        # The current position of each remaining original head.
        remaining = [h for h in range(self.self.num_attention_heads + len(self.pruned_heads))
                     if h not in self.pruned_heads]
        # On the CPU even where the model is being built on the meta device (transformers 5's from_pretrained).
        keep = torch.ones(len(remaining), size, dtype=torch.bool, device="cpu")
        for position, head in enumerate(remaining):
            if head in heads:
                keep[position] = False
        index = keep.view(-1).nonzero().squeeze(-1)
        self.self.query = _prune_linear(self.self.query, index, 0)
        self.self.key = _prune_linear(self.self.key, index, 0)
        self.self.value = _prune_linear(self.self.value, index, 0)
        self.output.dense = _prune_linear(self.output.dense, index, 1)
        self.self.num_attention_heads -= len(heads)
        self.self.all_head_size = self.self.num_attention_heads * size
        self.pruned_heads |= heads

    def forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False,
                query_states=None, head_mask=None, key_valid=None):
        context, probs = self.self(hidden_states, attention_mask, relative_table, positions, output_attentions,
                                   query_states, head_mask, key_valid)
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
        # A decoder layer may also attend to an encoder's states (transformers' add_cross_attention).
        if config.add_cross_attention:
            if not config.is_decoder:
                raise ValueError("config.add_cross_attention needs config.is_decoder=True (cross-attention is a "
                                 "decoder's)")
            self.crossattention = NezhaAttention(config)
        self.intermediate = NezhaIntermediate(config)
        self.output = NezhaOutput(config)

    def forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False,
                query_states=None, head_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                key_valid=None):
        attention_output, probs = self.attention(
            hidden_states, attention_mask, relative_table, positions, output_attentions, query_states, head_mask,
            key_valid,
        )
        cross_probs = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError("encoder_hidden_states were given, but this model has no cross-attention layers: "
                                 "build it with config.is_decoder=True and config.add_cross_attention=True")
            attention_output, cross_probs = self.crossattention(
                encoder_hidden_states, encoder_attention_mask, relative_table, positions, output_attentions,
                attention_output, head_mask,
            )
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, probs, cross_probs


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
        # torch.utils.checkpoint's arguments (gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)).
        self.gradient_checkpointing_kwargs: dict = {"use_reentrant": False}

    def forward(self, hidden_states, attention_mask=None, output_attentions=False, output_hidden_states=False,
                output_positions=None, head_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                key_valid=None):
        """``output_positions`` ([B, P]): the last layer computes only these rows (see NezhaModel.forward).
        ``key_valid`` ([B, L] bool): ``attention_mask`` as a key padding mask, where it is one.

        Returns the last layer's states and the tuples of hidden states, attentions and cross-attentions (None
        where not asked for).
        """
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions and encoder_hidden_states is not None else None
        table = self.relative_positions_table
        length = hidden_states.shape[1]
        if encoder_hidden_states is not None and encoder_hidden_states.shape[1] != length:
            raise ValueError(f"cross-attention needs encoder_hidden_states as long as the input ({length} tokens, "
                             f"got {encoder_hidden_states.shape[1]}): NEZHA's relative positions pair position i "
                             "of one with position i of the other, as in transformers' Nezha")
        # The bucket indices depend only on the length: built once, shared by all layers.
        positions = RelativePositions.build(length, self.max_relative_position, hidden_states.device)
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
            layer_head_mask = None if head_mask is None else head_mask[n]
            arguments = (hidden_states, mask, table, layer_positions, output_attentions, query_states,
                         layer_head_mask, encoder_hidden_states, encoder_attention_mask, key_valid)
            if self.gradient_checkpointing and self.training:
                hidden_states, probs, cross_probs = checkpoint(layer, *arguments,
                                                               **self.gradient_checkpointing_kwargs)
            else:
                hidden_states, probs, cross_probs = layer(*arguments)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
            if output_attentions:
                all_attentions = all_attentions + (probs,)
                if all_cross_attentions is not None:
                    all_cross_attentions = all_cross_attentions + (cross_probs,)
        return hidden_states, all_hidden_states, all_attentions, all_cross_attentions


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

    def _tie_weights(self) -> None:
        # The model's tie_weights calls it (transformers' calls it on every module that has it).
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
    """What transformers' ``PreTrainedModel`` gives its Nezha classes, implemented here so that transformers stays
    optional: weight init and tying, embeddings access and resizing, head pruning, head masks, gradient
    checkpointing, ``save_pretrained``/``from_pretrained`` (in ``checkpoint.py``)."""

    config_class = NezhaConfig
    base_model_prefix = "nezha"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # Attention implementations transformers can switch to: none, the relative terms need their own kernels.
    _supports_sdpa = False
    _supports_flash_attn_2 = False
    # Names of parameters that are aliases of other parameters (not written; restored by tying).
    _tied_weights_keys: tuple[str, ...] = ()
    _keys_to_ignore_on_save = None
    _keys_to_ignore_on_load_missing = None
    _keys_to_ignore_on_load_unexpected = None
    _keep_in_fp32_modules = None
    _no_split_modules = ["NezhaLayer"]

    def __init__(self, config: NezhaConfig, *args, **kwargs):
        if not isinstance(config, NezhaConfig):
            raise TypeError(f"config must be a NezhaConfig, got {type(config).__name__}")
        config.validate()
        super().__init__(*self._base_init_arguments(config))
        self.config = config
        self.name_or_path = config.name_or_path

    def _base_init_arguments(self, config: NezhaConfig) -> tuple:
        """What the next class's constructor takes: nothing for nn.Module; the config for transformers'
        PreTrainedModel, which follows this class in nezha_cli.modeling.transformers_classes."""
        return ()

    def post_init(self) -> None:
        """Initialise the weights, prune the config's pruned heads, tie the decoder (transformers' post_init)."""
        self.init_weights()
        if getattr(self.config, "gradient_checkpointing", False):  # a transformers config may not have it
            self.gradient_checkpointing_enable()

    def init_weights(self) -> None:
        self.apply(self._init_weights)
        if self.config.pruned_heads:
            self.prune_heads(self.config.pruned_heads)
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
        elif isinstance(module, ConditionalRandomField):
            module.reset_parameters()
        elif isinstance(module, NezhaEncoder):
            # Derived from the config, not saved: transformers 5 loads into a model built on the meta device and
            # has such buffers filled here.
            table = module.relative_positions_table
            module.relative_positions_table = relative_position_table(
                self.config.max_relative_position, self.config.attention_head_size).to(table.device, table.dtype)

    # -- properties transformers' models have -----------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    @classmethod
    def can_generate(cls) -> bool:
        return False

    # -- transformers' helpers for code built around a model -------------------------------------------------------
    def get_extended_attention_mask(self, attention_mask: torch.Tensor, input_shape=None, device=None,
                                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """The additive mask the attention takes, from a [B, L] or [B, L, L] mask (1 = attend); causal as well
        in a decoder. ``input_shape`` and ``device`` are transformers' arguments, not needed here."""
        return extended_attention_mask(attention_mask, dtype or self.dtype, causal=self.config.is_decoder)

    def invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        """The additive mask of cross-attention over encoder states, from a [B, L] or [B, L, L] mask."""
        return extended_attention_mask(encoder_attention_mask, self.dtype)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the parameters (and buffers)."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else ())]
        return sum(t.nelement() * t.element_size() for t in tensors)

    def estimate_tokens(self, input_dict: dict) -> int:
        """Tokens in a batch of inputs (0 without ``input_ids``), as transformers' Trainer counts them."""
        tokens = input_dict.get(self.main_input_name)
        return tokens.numel() if tokens is not None else 0

    def floating_point_ops(self, input_dict: dict, exclude_embeddings: bool = True) -> int:
        """transformers' estimate of a training step's FLOPs: 6 x tokens x parameters (no attention terms)."""
        return 6 * self.estimate_tokens(input_dict) * self.num_parameters(exclude_embeddings=exclude_embeddings)

    # -- embeddings -------------------------------------------------------------------------------------------
    def tie_weights(self) -> None:
        """Share the word embeddings with the MLM decoder (a copy under ``config.torchscript``, as transformers)."""
        head = self.get_output_embeddings()
        if head is None or not self.config.tie_word_embeddings:
            return
        words = self.get_input_embeddings().weight
        head.weight = nn.Parameter(words.detach().clone()) if self.config.torchscript else words
        predictions = self._mlm_head()
        if predictions is not None and head is predictions.decoder:
            predictions._tie_weights()

    def _mlm_head(self) -> NezhaLMPredictionHead | None:
        cls = getattr(self, "cls", None)
        return getattr(cls, "predictions", None)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        head = self._mlm_head()
        return head.decoder if head is not None else None

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        head = self._mlm_head()
        if head is None:
            raise AttributeError(f"{type(self).__name__} has no output embeddings")
        head.decoder = new_embeddings
        if new_embeddings.bias is not None:
            head.bias = new_embeddings.bias

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = False) -> nn.Embedding:
        """Grow or shrink the vocabulary to ``new_num_tokens`` (rounded up to ``pad_to_multiple_of``).

        Kept rows keep their vectors; new rows are initialised like the model's other embeddings (or, with
        ``mean_resizing``, to the mean of the old rows). The MLM decoder and its bias follow, and
        ``config.vocab_size`` is updated. Returns the input embeddings.
        """
        old = self.get_input_embeddings()
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or isinstance(pad_to_multiple_of, bool) \
                    or pad_to_multiple_of < 1:
                raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r}: must be a positive integer")
            wanted = old.num_embeddings if new_num_tokens is None else new_num_tokens
            new_num_tokens = -(-wanted // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens is None or new_num_tokens == old.num_embeddings:
            return old
        if new_num_tokens < 1:
            raise ValueError(f"new_num_tokens={new_num_tokens}: a vocabulary needs at least one token")
        new = nn.Embedding(new_num_tokens, old.embedding_dim, padding_idx=old.padding_idx
                           if old.padding_idx is not None and old.padding_idx < new_num_tokens else None)
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        self._init_weights(new)
        keep = min(old.num_embeddings, new_num_tokens)
        with torch.no_grad():
            if mean_resizing and new_num_tokens > old.num_embeddings:
                new.weight[keep:] = old.weight.mean(0)
            new.weight[:keep] = old.weight[:keep]
        self.set_input_embeddings(new)
        head = self._mlm_head()
        if head is not None:
            bias = torch.zeros(new_num_tokens, dtype=head.bias.dtype, device=head.bias.device)
            bias[:keep] = head.bias.data[:keep]
            head.bias = nn.Parameter(bias)
            decoder = head.decoder
            if not self.config.tie_word_embeddings or self.config.torchscript:
                weight = torch.empty(new_num_tokens, decoder.in_features, dtype=decoder.weight.dtype,
                                     device=decoder.weight.device).normal_(0.0, self.config.initializer_range)
                weight[:keep] = decoder.weight.data[:keep]
                decoder.weight = nn.Parameter(weight)
            decoder.bias = head.bias
            decoder.out_features = new_num_tokens
        self.config.vocab_size = self.vocab_size = new_num_tokens
        self.tie_weights()
        return self.get_input_embeddings()

    # -- attention heads --------------------------------------------------------------------------------------
    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Remove heads for good, ``{layer: [head, ...]}``; recorded in ``config.pruned_heads`` (saved with it)."""
        # Layers as numbers: config.json keys are strings (transformers 5 leaves them so).
        heads_to_prune = {int(layer): set(heads) for layer, heads in heads_to_prune.items()}
        pruned = {int(layer): set(heads) for layer, heads in self.config.pruned_heads.items()}
        for layer, heads in heads_to_prune.items():
            pruned[layer] = pruned.get(layer, set()) | heads
        self.config.pruned_heads = {layer: sorted(heads) for layer, heads in pruned.items()}
        for layer, heads in heads_to_prune.items():
            self.base_model.encoder.layer[layer].attention.prune_heads(heads)

    def get_head_mask(self, head_mask: torch.Tensor | None, num_hidden_layers: int) -> torch.Tensor | None:
        """[H] or [layers, H] (1 = keep) -> [layers, 1, H, 1, 1], to multiply each layer's probabilities."""
        if head_mask is None:
            return None
        if head_mask.dim() == 1:
            head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
        elif head_mask.dim() == 2:
            head_mask = head_mask[:, None, :, None, None]
        else:
            raise ValueError(f"head_mask must be [num_heads] or [num_hidden_layers, num_heads], got shape "
                             f"{tuple(head_mask.shape)}")
        return head_mask.to(self.dtype)

    # -- attention implementation ---------------------------------------------------------------------------------
    def set_attn_implementation(self, attn_implementation: str | None) -> None:
        """Compute the attention with "eager" (buckets), "sdpa" (one SDPA call where L <= K + 1) or "fused" (the
        Triton kernel), or None (automatic); each falls back to eager where it does not apply
        (:func:`~nezha_cli.modeling.kernels.dispatch.attention_path`). Also ``from_pretrained(...,
        attn_implementation=...)`` and ``NezhaConfig(attn_implementation=...)``, as in transformers."""
        check_attn_implementation(attn_implementation)  # before the config changes
        self.config.attn_implementation = attn_implementation
        for module in self.modules():
            if isinstance(module, NezhaSelfAttention):
                module.attn_implementation = attn_implementation

    # -- gradient checkpointing -------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each layer in the backward instead of keeping its activations (less memory, ~30% more time).

        ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint`` (default: non-reentrant).
        Dropout draws the same masks in the recomputation, so results equal those without checkpointing.
        """
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for module in self.modules():
            if isinstance(module, NezhaEncoder):
                module.gradient_checkpointing = True
                module.gradient_checkpointing_kwargs = kwargs
        if kwargs["use_reentrant"]:
            # Reentrant checkpointing computes no gradients unless an input of the layer requires one.
            self.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, NezhaEncoder):
                module.gradient_checkpointing = False
        self.disable_input_require_grads()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_input_require_grads(self) -> None:
        """Make the embeddings' output require grad (for adapters on a frozen body, with checkpointing)."""
        def require_grad(module, inputs, output):
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(require_grad)

    def disable_input_require_grads(self) -> None:
        hook = self.__dict__.pop("_require_grads_hook", None)
        if hook is not None:
            hook.remove()

    # -- sizes and files --------------------------------------------------------------------------------------
    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False,
                       trainable_only: bool | None = None) -> int:
        only_trainable = only_trainable if trainable_only is None else trainable_only
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) in seen or id(p) in skip or (only_trainable and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None, *model_args, **kwargs):
        return from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _from_config(cls, config: NezhaConfig, **kwargs):
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        torch_dtype = dtype or torch_dtype  # transformers 4.56's name wins, as in the config
        model = cls(config, **kwargs)
        return model if torch_dtype is None else model.to(torch_dtype)

    def _prepare_outputs(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        """The per-call switches, defaulting to the config's (as transformers does)."""
        config = self.config
        return (config.output_attentions if output_attentions is None else output_attentions,
                config.output_hidden_states if output_hidden_states is None else output_hidden_states,
                config.use_return_dict if return_dict is None else return_dict)


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool = False) -> torch.Tensor:
    """[B, L] (1 = keep) or [B, L, L] -> additive mask broadcastable to [B, H, L, L], as transformers builds it.

    ``causal`` (a decoder's self-attention) also hides every later position from each query.
    """
    if attention_mask.dim() == 2:
        mask = attention_mask[:, None, None, :]
        if causal:
            length = attention_mask.shape[1]
            lower = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
            mask = mask * lower[None, None].to(mask.dtype)
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
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        output_positions: torch.Tensor | None = None,
    ):
        """transformers' NezhaModel.forward, argument for argument; None switches take the config's value.

        ``output_positions`` ([B, P] long; not in transformers): compute the last layer only where a head reads.
        ``last_hidden_state`` is then [B, P, H], equal to the full one gathered at those positions, and
        ``pooler_output`` is unchanged ([CLS] is always computed). The last layer's queries, attention output and
        feed-forward run on P + 1 rows instead of L. If asked for, the last entries of ``hidden_states`` and
        ``attentions`` hold the rows of [CLS] and then those positions.

        ``past_key_values`` (incremental decoding) is not supported: NEZHA is an encoder, and transformers' Nezha
        could not use a cache either (its relative positions need as many queries as keys). ``use_cache`` is
        accepted and ignored.
        """
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if past_key_values is not None:
            raise NotImplementedError("past_key_values: NEZHA's relative attention has no key/value cache; pass the "
                                      "whole sequence")
        if (input_ids if input_ids is not None else inputs_embeds).shape[1] == 0:
            # Caught here: further in, the attention's reshapes fail with an error that names no input.
            raise ValueError("the input has no tokens (sequence length 0): give each input at least one token "
                             "(tokenized inputs start with [CLS])")
        embedding_output = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        causal = bool(self.config.is_decoder)
        if causal and attention_mask is None:
            attention_mask = torch.ones(embedding_output.shape[:2], device=embedding_output.device)
        mask = key_valid = None
        if attention_mask is not None:
            mask = extended_attention_mask(attention_mask, embedding_output.dtype, causal=causal)
            if not causal and fast_paths.keeps_every_key(attention_mask):
                mask = None  # adding zeros: a pass over every layer's scores for nothing
            elif not causal and attention_mask.dim() == 2 and not attention_mask.is_floating_point():
                key_valid = attention_mask != 0  # the same mask for a fused attention (a float one may weigh)
        cross_mask = None
        if encoder_hidden_states is not None:
            if not self.config.is_decoder:
                raise ValueError("encoder_hidden_states are for a decoder: build the model with "
                                 "config.is_decoder=True and config.add_cross_attention=True")
            if encoder_attention_mask is None:
                encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], device=embedding_output.device)
            cross_mask = extended_attention_mask(encoder_attention_mask, embedding_output.dtype)
        head_mask = self.get_head_mask(head_mask, self.config.num_hidden_layers)
        rows = None
        if output_positions is not None:
            rows = torch.cat([output_positions.new_zeros(output_positions.shape[0], 1), output_positions], dim=1)
        # torch.export (ONNX) takes the full last layer: its shape-agnostic bucket sums are written for all rows.
        sparse = rows is not None and not torch.compiler.is_exporting() and encoder_hidden_states is None
        sequence_output, hidden_states, attentions, cross_attentions = self.encoder(
            embedding_output, mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            output_positions=rows if sparse else None, head_mask=head_mask,
            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=cross_mask, key_valid=key_valid,
        )
        if rows is not None and not sparse:
            sequence_output = gather_positions(sequence_output, rows)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None  # row 0 is [CLS]
        if rows is not None:
            sequence_output = sequence_output[:, 1:]
        output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=hidden_states,
            attentions=attentions, cross_attentions=cross_attentions)
        return output if return_dict else output.to_tuple()


def _last_layer_rows(positions: torch.Tensor | None, output_attentions: bool, output_hidden_states: bool) -> dict:
    """``output_positions`` for a head that reads only ``positions`` (or only [CLS]: ``positions`` [B, 0]).

    Not when per-layer outputs are asked for: those keep the full shape, as in transformers.
    """
    if positions is None or output_hidden_states or output_attentions:
        return {}
    return {"output_positions": positions}


def _cls_only(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor | None:
    """[B, 0] positions: for a head that reads the pooled [CLS] row alone (no other rows of the last layer)."""
    ref = input_ids if input_ids is not None else inputs_embeds
    if ref is None:
        return None  # NezhaModel says what is missing
    return torch.zeros(ref.shape[0], 0, dtype=torch.long, device=ref.device)


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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, next_sentence_label=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, masked_lm_positions=None):
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        rows = _last_layer_rows(masked_lm_positions, output_attentions, output_hidden_states)
        input_ids, inputs_embeds, decoder_weight = fast_paths.tied_word_lookup(self, input_ids, inputs_embeds)
        outputs = self.nezha(input_ids, attention_mask, token_type_ids, head_mask, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, **rows)
        sequence_output = outputs.last_hidden_state
        if masked_lm_positions is not None and not rows:
            sequence_output = gather_positions(sequence_output, masked_lm_positions)
        prediction_scores, seq_relationship_score = self.cls(sequence_output, outputs.pooler_output, decoder_weight)

        loss = mlm_loss = nsp_loss = None  # loss is their sum, as in transformers: both labels or no loss
        if labels is not None:
            logits = prediction_scores.reshape(-1, prediction_scores.shape[-1]).float()
            mlm_loss = F.cross_entropy(logits, labels.reshape(-1))
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(seq_relationship_score.view(-1, 2).float(), next_sentence_label.view(-1))
        if mlm_loss is not None and nsp_loss is not None:
            loss = mlm_loss + nsp_loss
        output = NezhaForPreTrainingOutput(loss, prediction_scores, seq_relationship_score, outputs.hidden_states,
                                           outputs.attentions)
        return output if return_dict else output.to_tuple()


class NezhaForMaskedLM(NezhaPreTrainedModel):
    _tied_weights_keys = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        if config.is_decoder:
            warnings.warn("NezhaForMaskedLM with config.is_decoder=True attends left to right only; MLM needs "
                          "bi-directional attention", stacklevel=2)
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.cls = NezhaOnlyMLMHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, head_mask=None, inputs_embeds=None,
                encoder_hidden_states=None, encoder_attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        input_ids, inputs_embeds, decoder_weight = fast_paths.tied_word_lookup(self, input_ids, inputs_embeds)
        outputs = self.nezha(input_ids, attention_mask, token_type_ids, head_mask, inputs_embeds,
                             encoder_hidden_states, encoder_attention_mask, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True)
        prediction_scores = self.cls(outputs.last_hidden_state, decoder_weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(prediction_scores.view(-1, prediction_scores.shape[-1]).float(), labels.view(-1))
        output = MaskedLMOutput(loss, prediction_scores, outputs.hidden_states, outputs.attentions)
        return output if return_dict else output.to_tuple()


class NezhaForNextSentencePrediction(NezhaPreTrainedModel):
    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config)
        self.cls = NezhaOnlyNSPHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        if "next_sentence_label" in kwargs:
            # transformers' deprecated name, still accepted there with a warning.
            warnings.warn("next_sentence_label is deprecated; use labels", FutureWarning, stacklevel=2)
            labels = kwargs.pop("next_sentence_label")
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(kwargs)}")
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        rows = _last_layer_rows(_cls_only(input_ids, inputs_embeds), output_attentions, output_hidden_states)
        outputs = self.nezha(input_ids, attention_mask, token_type_ids, head_mask, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, **rows)
        logits = self.cls(outputs.pooler_output)
        loss = None if labels is None else F.cross_entropy(logits.view(-1, 2).float(), labels.view(-1))
        output = NextSentencePredictorOutput(loss, logits, outputs.hidden_states, outputs.attentions)
        return output if return_dict else output.to_tuple()


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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        rows = _last_layer_rows(_cls_only(input_ids, inputs_embeds), output_attentions, output_hidden_states)
        outputs = self.nezha(input_ids, attention_mask, token_type_ids, head_mask, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, **rows)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None if labels is None else self._loss(logits, labels)
        output = SequenceClassifierOutput(loss, logits, outputs.hidden_states, outputs.attentions)
        return output if return_dict else output.to_tuple()

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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        def flat(x):
            return None if x is None else x.reshape(-1, *x.shape[2:])

        input_ids, inputs_embeds = flat(input_ids), flat(inputs_embeds)
        rows = _last_layer_rows(_cls_only(input_ids, inputs_embeds), output_attentions, output_hidden_states)
        outputs = self.nezha(input_ids, flat(attention_mask), flat(token_type_ids), head_mask, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, **rows)
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        output = MultipleChoiceModelOutput(loss, logits, outputs.hidden_states, outputs.attentions)
        return output if return_dict else output.to_tuple()


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

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                word_feature_ids=None):
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        if self.word_feature_embeddings is not None:
            if word_feature_ids is None or input_ids is None:
                raise ValueError(f"this tagger was fine-tuned with word features ({self.config.word_features}): "
                                 "pass input_ids and word_feature_ids")
            inputs_embeds = (self.nezha.embeddings.word_embeddings(input_ids)
                             + self.word_feature_embeddings(word_feature_ids))
            input_ids = None
        outputs = self.nezha(input_ids, attention_mask, token_type_ids, head_mask, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None and self.crf is not None:
            loss = self.crf(logits, labels)
        elif labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        output = TokenClassifierOutput(loss, logits, outputs.hidden_states, outputs.attentions)
        return output if return_dict else output.to_tuple()


class NezhaForQuestionAnswering(NezhaPreTrainedModel):
    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, head_mask=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        output_attentions, output_hidden_states, return_dict = self._prepare_outputs(
            output_attentions, output_hidden_states, return_dict)
        outputs = self.nezha(input_ids, attention_mask, token_type_ids, head_mask, inputs_embeds,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True)
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
        output = QuestionAnsweringModelOutput(loss, start_logits, end_logits, outputs.hidden_states,
                                              outputs.attentions)
        return output if return_dict else output.to_tuple()


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
