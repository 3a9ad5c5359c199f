"""What `nezha finetune --crf` costs in a training step: the same tagger with and without its CRF.

NezhaForTokenClassification with the 7 PD-NER tags takes forward+backward steps in turn with ``use_crf`` (the
sentence-level likelihood: the forward algorithm, step by step over the positions on a CPU, as a tree of pairwise
products on a GPU) and without (token cross-entropy), same weights, same batch (ABAB...); the median step times
and their ratio are printed, and the CRF's loss alone.

    python benchmarks/bench_crf.py                                  # the tiny recipe's shape, PD-NER's batches
    python benchmarks/bench_crf.py --model base --batch 32 --length 128 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

SHAPES = {
    # `nezha pretrain`'s tiny recipe (the PD-NER measurements in the README) and BERT-base.
    "tiny": dict(vocab_size=8000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "base": dict(),
}
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def measure(shape: str, batch: int, length: int, device: str, precision: str, steps: int) -> str:
    import torch

    from nezha_cli.modeling import NezhaConfig, NezhaForTokenClassification

    torch.manual_seed(0)
    config = dict(SHAPES[shape], id2label=dict(enumerate(TAGS)))
    plain = NezhaForTokenClassification(NezhaConfig(**config)).to(device).train()
    tagger = NezhaForTokenClassification(NezhaConfig(**config, use_crf=True)).to(device).train()
    tagger.load_state_dict(plain.state_dict(), strict=False)
    vocab = plain.config.vocab_size
    ids = torch.randint(100, vocab, (batch, length), device=device)
    # Sentences of mixed length as group-by-length batches have them: 3/4 to all of the positions, padding after.
    lengths = torch.randint(length * 3 // 4, length + 1, (batch,), device=device)
    positions = torch.arange(length, device=device)
    mask = (positions[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, len(TAGS), (batch, length), device=device)
    labels[(positions[None, :] >= lengths[:, None] - 1) | (positions[None, :] == 0)] = -100  # [CLS], [SEP], padding
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step(model) -> float:
        sync()
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    for _ in range(2):
        step(tagger), step(plain)
    with_crf, without, ratios = [], [], []
    for _ in range(steps):
        with_crf.append(step(tagger))
        without.append(step(plain))
        ratios.append(with_crf[-1] / without[-1])

    emissions = torch.randn(batch, length, len(TAGS), device=device, requires_grad=True)

    def crf_alone() -> float:
        sync()
        start = time.perf_counter()
        tagger.crf(emissions, labels).backward()
        sync()
        return time.perf_counter() - start

    crf_alone()
    alone = statistics.median(crf_alone() for _ in range(max(steps, 5)))
    step_ms = statistics.median(with_crf) * 1e3
    return (f"{shape} L={length} batch {batch} {device} {precision}: step {step_ms:.1f} ms with the CRF vs "
            f"{statistics.median(without) * 1e3:.1f} ms without: {100 * (statistics.median(ratios) - 1):+.1f}% "
            f"(median of {steps} paired rounds); the CRF loss alone fwd+bwd {alone * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=48, help="padded length of a batch (tokens)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (medians reported)")
    args = parser.parse_args()
    from nezha_cli.cli.malloc import tune_malloc

    tune_malloc()  # as nezha's commands do (both taggers alike)
    print(measure(args.model, args.batch, args.length, args.device, args.precision, args.steps), flush=True)


if __name__ == "__main__":
    main()
