import math

import pytest
import torch

from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining
from nezha_cli.modeling.kernels import dropout as dropout_module
from nezha_cli.modeling.kernels.dropout import Dropout, keep_mask, random_words


@pytest.fixture
def small_chunks(monkeypatch):
    # Several chunks (and so several generators and pool tasks) on test-sized tensors.
    monkeypatch.setattr(dropout_module, "CHUNK_WORDS", 1 << 10)
    monkeypatch.setattr(dropout_module, "MIN_ELEMENTS", 1 << 10)


def test_random_words_fill_all_64_bits(small_chunks):
    torch.manual_seed(0)
    words = random_words(50_000)
    bits = torch.stack([(words >> s) & 1 for s in range(64)]).double().mean(1)
    # 50k draws per bit: a bit stuck at 0 or 1 (or a chunk left unfilled) is far outside 5 standard errors.
    assert torch.all((bits - 0.5).abs() < 5 * 0.5 / math.sqrt(50_000))
    lanes = words.view(torch.int16).view(-1, 4).double()
    assert torch.all(lanes.mean(0).abs() < 5 * 65536 / math.sqrt(12 * 50_000))


def test_mask_depends_on_the_seed_not_on_the_thread_count(small_chunks):
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(3)
        torch.set_num_threads(1)
        one = keep_mask(torch.Size([7, 3000]), 6554)
        torch.manual_seed(3)
        torch.set_num_threads(4)
        four = keep_mask(torch.Size([7, 3000]), 6554)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, four)
    torch.manual_seed(4)
    assert not torch.equal(one, keep_mask(torch.Size([7, 3000]), 6554))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_rate_scale_and_gradient(small_chunks, p, dtype):
    torch.manual_seed(1)
    x = (torch.rand(64, 1000) + 0.5).to(dtype).requires_grad_()
    layer = Dropout(p).train()
    out = layer(x)
    assert out.dtype == dtype
    kept = out != 0
    effective = round(p * 65536) / 65536
    n = x.numel()
    assert abs(1 - kept.double().mean().item() - effective) < 5 * math.sqrt(p * (1 - p) / n)
    # Kept elements are scaled by 1 / (1 - p'): the expectation of the output is the input.
    torch.testing.assert_close(out[kept], (x[kept].double() / (1 - effective)).to(dtype))
    out.backward(torch.full_like(out, 2.0))
    expected = torch.where(kept, 2.0 / (1 - effective), 0.0).to(dtype)
    torch.testing.assert_close(x.grad, expected)
    # Every row is masked independently of the others (no chunk repeats another's mask).
    assert len({tuple(row.tolist()) for row in kept}) == kept.shape[0]


def test_eval_small_and_inplace_take_the_plain_path(small_chunks):
    x = torch.randn(40, 40)
    assert Dropout(0.3).eval()(x) is x
    torch.manual_seed(5)
    small = Dropout(0.3).train()(torch.ones(10))
    torch.manual_seed(5)
    assert torch.equal(small, torch.nn.functional.dropout(torch.ones(10), 0.3, True))
    y = torch.ones(2000)
    Dropout(0.3, inplace=True).train()(y)
    assert set(y.unique().tolist()) <= {0.0, torch.tensor(1 / 0.7).item()}  # p itself, not p'


def test_model_training_steps_repeat_with_the_seed(small_chunks):
    config = NezhaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    ids = torch.randint(5, config.vocab_size, (2, 40))

    def loss(seed):
        torch.manual_seed(0)
        model = NezhaForPreTraining(config).train()
        torch.manual_seed(seed)
        return model(ids, labels=ids, next_sentence_label=torch.tensor([0, 1])).loss

    assert torch.equal(loss(1), loss(1))
    assert not torch.equal(loss(1), loss(2))
