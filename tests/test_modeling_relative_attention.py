"""The bucketed relative attention against a plain O(L^2 d) reference written here from the paper's formulas."""

import dataclasses
import math

import pytest
import torch

from nezha_cli.modeling import NezhaConfig, NezhaModel
from nezha_cli.modeling.relative_attention import (
    RelativePositions,
    bucket_product,
    diagonal_band,
    expand_buckets,
    relative_context,
    relative_position_index,
    relative_position_table,
    relative_scores,
    sum_buckets,
)


def reference_table(k, depth):
    # E[p, 2c] = sin(p / 10000^(2c/d)), E[p, 2c+1] = cos(p / 10000^(2c/d)), p = 0 .. 2K (the shifted index).
    table = torch.empty(2 * k + 1, depth, dtype=torch.float64)
    for p in range(2 * k + 1):
        for c in range(depth // 2):
            angle = p / 10000 ** (2 * c / depth)
            table[p, 2 * c], table[p, 2 * c + 1] = math.sin(angle), math.cos(angle)
    return table


def reference_relations(length, k, depth):
    """a_ij as an explicit [L, L, d] tensor (what the released code materialises)."""
    table = reference_table(k, depth)
    rel = torch.empty(length, length, depth, dtype=torch.float64)
    for i in range(length):
        for j in range(length):
            rel[i, j] = table[min(max(j - i, -k), k) + k]
    return rel


def reference_attention(q, k, v, a, mask, scale):
    scores = (torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("bhid,ijd->bhij", q, a)) * scale + mask
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhij,bhjd->bhid", probs, v) + torch.einsum("bhij,ijd->bhid", probs, a)


def test_table_matches_the_formula():
    assert torch.allclose(relative_position_table(5, 8).double(), reference_table(5, 8), atol=1e-6)


@pytest.mark.parametrize("length", [1, 2, 5, 7, 9, 16, 30])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_bucket_primitives(length, k):
    # Lengths up to K (nothing clipped), from K to 2K (the clipped buckets as corner sums) and beyond (block sums).
    torch.manual_seed(length * 10 + k)
    pos = RelativePositions.build(length, k)
    # Below K + 1 tokens no distance is clipped: the buckets are those of K' = L - 1 over the 2L - 1 rows of E
    # around p = K (narrower bucket operands, same attention).
    reach = pos.max_relative_position
    assert reach == (k if length > k else max(1, length - 1)) and pos.table_offset == k - reach
    assert torch.equal(pos.bucket_index + pos.table_offset, relative_position_index(length, k))
    table = relative_position_table(k, 4)
    assert torch.equal(pos.reachable(table), table[k - reach: k + reach + 1])
    index = pos.bucket_index
    x = torch.randn(2, 3, length, length, dtype=torch.float64)
    y = torch.randn(2, 3, length, 2 * reach + 1, dtype=torch.float64)
    expected_sum = torch.zeros_like(y)
    for i in range(length):
        for j in range(length):
            expected_sum[..., i, index[i, j]] += x[..., i, j]
    sums = sum_buckets(x, pos)
    # Bucket columns are padded to a multiple of 8 (aligned GEMM operands); the padding holds zeros.
    assert sums.shape[-1] == pos.width and pos.width % 8 == 0 and pos.width >= 2 * reach + 1
    assert torch.allclose(sums[..., : 2 * reach + 1], expected_sum)
    assert torch.all(sums[..., 2 * reach + 1:] == 0)
    # The prefix-sum formulation torch.export takes (no block indices) gives the same sums.
    exported = sum_buckets(x, dataclasses.replace(pos, block_mask=None, remainder_index=None, remainder_valid=None))
    assert torch.allclose(exported, sums)
    # So does the block-sum route, which query rows take at every length.
    assert torch.allclose(sum_buckets(x, dataclasses.replace(pos, low_mask=None, high_mask=None)), sums)
    assert (pos.low_mask is not None) == (reach < length <= 2 * reach)
    assert torch.equal(expand_buckets(y, pos), y[..., torch.arange(length)[:, None], index])


@pytest.mark.parametrize("heads,length", [(1, 9), (3, 1), (1, 1), (4, 6)])
def test_bucket_product_in_the_projections_layout(heads, length):
    """q.E^T from the heads' view of one [B, L, H, d] projection, whatever the number of heads or tokens (with one,
    torch.matmul would broadcast E instead of folding the rows into one GEMM)."""
    table = torch.randn(24, 8)
    x = torch.randn(2, length, heads, 8).transpose(1, 2)  # [B, H, L, d], as the attention splits its heads
    product = bucket_product(x, table)
    assert product.shape == (2, heads, length, 24)
    torch.testing.assert_close(product, torch.einsum("bhld,wd->bhlw", x, table))
    contiguous = x.contiguous()
    torch.testing.assert_close(bucket_product(contiguous, table), product)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length,k", [(9, 3), (100, 64), (130, 8), (300, 64)])
def test_bucket_primitives_in_half_precision(dtype, length, k):
    # The CPU takes its own routes for 2-byte inputs (a gather through an int16 view, block sums without an fp32
    # copy): the gather must move exactly the same bits, the sums stay within the rounding of a few block sums.
    torch.manual_seed(length + k)
    pos = RelativePositions.build(length, k)
    y = torch.randn(2, 3, length, pos.width).to(dtype)
    assert torch.equal(expand_buckets(y, pos), y[..., torch.arange(length)[:, None], pos.bucket_index])
    x = torch.randn(2, 3, length, length).to(dtype)
    sums = sum_buckets(x, pos)
    expected = sum_buckets(x.double(), pos)
    assert sums.dtype == dtype
    # Each sum of K keys may be rounded once (and the result): eps times the sum of those |sums| bounds the error.
    blocks = x.double()[..., : length // k * k].unflatten(-1, (-1, k)).sum(-1).abs().sum(-1, keepdim=True)
    tolerance = torch.finfo(dtype).eps * (blocks + expected.abs())
    assert torch.all((sums.double() - expected).abs() <= tolerance)

@pytest.mark.parametrize("length", [1, 2, 5, 9, 64, 130])
@pytest.mark.parametrize("first,width", [(-3, 8), (-8, 24), (-14, 7), (2, 5), (-64, 136)])
@pytest.mark.parametrize("layout", ["contiguous", "offset", "transposed", "bf16"])
def testdiagonal_band_reads_the_diagonals(length, first, width, layout):
    # out[i, c] = x[i, i + first + c] inside the row, else 0: through the strided view (rows whose band stays
    # inside the tensor) and the gather (the other rows, and inputs the view cannot take).
    torch.manual_seed(length + width)
    x = torch.randn(3, 2, length, length)
    if layout == "offset":
        x = torch.randn(4, 2, length, length)[1:]  # contiguous, but not at the start of its storage
    elif layout == "transposed":
        x = x.transpose(-1, -2)
    elif layout == "bf16":
        x = x.bfloat16()
    i = torch.arange(length)[:, None]
    columns = i + first + torch.arange(width)[None, :]
    inside = (columns >= 0) & (columns < length)
    band = diagonal_band(x, first, columns.clamp(0, length - 1), inside.float())
    expected = torch.where(inside, x.gather(-1, columns.clamp(0, length - 1).expand(*x.shape[:-1], width)), 0)
    assert band.dtype == x.dtype and torch.equal(band, expected)


@pytest.mark.parametrize("length", [1, 5, 17, 40])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "heads-view"])
def test_attention_core_matches_reference_with_padding(length, grad, layout):
    torch.manual_seed(length)
    k, d = 8, 6
    table = relative_position_table(k, d)
    a = reference_relations(length, k, d).float()
    pos = RelativePositions.build(length, k)
    if layout == "contiguous":
        q, key, v = (torch.randn(2, 3, length, d, requires_grad=grad) for _ in range(3))
    else:  # as the model splits its projections: a [B, L, H, d] tensor seen as [B, H, L, d]
        q, key, v = (torch.randn(2, length, 3, d, requires_grad=grad).transpose(1, 2) for _ in range(3))
    mask = torch.zeros(2, 1, 1, length)
    mask[1, ..., max(1, length - 3):] = torch.finfo(torch.float32).min  # padding in the second sequence
    scale = 1 / math.sqrt(d)
    ours_scores = relative_scores(q * scale, key, table, pos) + mask
    ours = relative_context(torch.softmax(ours_scores, -1), v, table, pos)
    ref = reference_attention(q, key, v, a, mask, scale)
    assert (ours - ref).abs().max() <= 1e-5
    if grad:
        g = torch.randn_like(ref)
        ours_grads = torch.autograd.grad((ours * g).sum(), (q, key, v))
        ref_grads = torch.autograd.grad((ref * g).sum(), (q, key, v))
        for x, y in zip(ours_grads, ref_grads):
            assert (x - y).abs().max() <= 1e-5


def test_gradcheck_float64():
    torch.manual_seed(0)
    length, k, d = 9, 3, 4
    table = relative_position_table(k, d).double()
    pos = RelativePositions.build(length, k)
    q, key, v = (torch.randn(1, 2, length, d, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def f(q, key, v):
        return relative_context(torch.softmax(relative_scores(q, key, table, pos), -1), v, table, pos)

    assert torch.autograd.gradcheck(f, (q, key, v))


def test_model_layer_equals_reference_beyond_max_position_embeddings():
    """A whole NezhaModel layer against the reference, at 3 x max_position_embeddings tokens, with padding."""
    torch.manual_seed(0)
    config = NezhaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16, max_relative_position=4,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = NezhaModel(config).eval()
    length = 3 * config.max_position_embeddings
    ids = torch.randint(1, 50, (2, length))
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, 40:] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=attention_mask).last_hidden_state
        emb = model.embeddings(ids)
        attn = model.encoder.layer[0].attention
        heads, d = 2, 8

        def split(x):
            return x.view(2, length, heads, d).transpose(1, 2).double()

        q, key, v = split(attn.self.query(emb)), split(attn.self.key(emb)), split(attn.self.value(emb))
        mask = ((1.0 - attention_mask[:, None, None, :].double()) * torch.finfo(torch.float32).min)
        ctx = reference_attention(q, key, v, reference_relations(length, 4, d), mask, 1 / math.sqrt(d))
        ctx = ctx.transpose(1, 2).reshape(2, length, 16).float()
        layer = model.encoder.layer[0]
        attention_output = attn.output(ctx, emb)
        expected = layer.output(layer.intermediate(attention_output), attention_output)
    assert out.shape == (2, length, 16)
    assert (out - expected).abs().max() <= 1e-5
