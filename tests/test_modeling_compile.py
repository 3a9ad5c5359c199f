"""torch.compile: the model compiles as one graph and computes what eager PyTorch computes (issue 28, item 3).

Compiling takes tens of seconds on a small CPU, so one test compiles one tiny model, forward and backward.
"""

import pytest
import torch

from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining

pytestmark = pytest.mark.slow


def test_pretraining_model_compiles_fullgraph_and_equals_eager():
    torch.manual_seed(0)
    # No dropout: compiled code draws its own random masks. L = 20 > 2K + 1 exercises the clipped buckets.
    config = NezhaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_relative_position=8, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    model = NezhaForPreTraining(config).train()
    ids = torch.randint(5, 99, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=(torch.arange(20) >= 10).long().expand(2, -1),
                  masked_lm_positions=torch.tensor([[1, 3, 9], [2, 5, 0]]),
                  labels=torch.tensor([[7, 8, 9], [9, 11, -100]]), next_sentence_label=torch.tensor([0, 1]))

    eager = model(**inputs)
    eager.loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True)  # a graph break would raise here
    out = compiled(**inputs)
    out.loss.backward()
    torch.testing.assert_close(out.prediction_logits, eager.prediction_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, eager.loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.compiler.reset()
