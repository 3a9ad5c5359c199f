"""Inference speed on this CPU: PyTorch eager against onnxruntime fp32 and int8, sentences/s at L = 128.

The model is a NEZHA sequence classifier of BERT-base size by default (12 layers, 768 hidden, 12 heads, 3072
intermediate, 21128-word vocab) with random weights, exported with ``nezha export --format onnx --quantize int8``
(the library call, including its parity check at the benchmark length). Every backend runs the same batches
with the same number of threads; the ratios against PyTorch eager are measured in the same run. The int8
model's accuracy change against PyTorch (max |diff| of the logits, argmax agreement) is printed beside its speed.

    python benchmarks/bench_inference.py                       # BERT-base, L = 128, batch 8
    python benchmarks/bench_inference.py --layers 2 --hidden 128 --heads 2 --seconds 2   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nezha_cli.interchange import export_model  # noqa: E402
from nezha_cli.interchange.onnx import INT8_NAME, ONNX_NAME, session  # noqa: E402
from nezha_cli.modeling import NezhaConfig, NezhaForSequenceClassification  # noqa: E402


def make_batches(count: int, batch: int, length: int, vocab: int) -> list[dict[str, np.ndarray]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(5, vocab, (batch, length), generator=g)
        types = (torch.arange(length) >= length // 2).long().expand(batch, -1).contiguous()
        batches.append({"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
                        "token_type_ids": types.numpy()})
    return batches


def measure(run, batches, seconds: float, batch: int) -> float:
    """Sentences per second over at least ``seconds`` (and at least one pass over the batches), after warm-up."""
    run(batches[0])
    done, start = 0, time.perf_counter()
    while True:
        for b in batches:
            run(b)
            done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=None, help="[default: hidden / 64]")
    parser.add_argument("--intermediate", type=int, default=None, help="[default: 4 x hidden]")
    parser.add_argument("--vocab", type=int, default=21128)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per backend")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for every backend")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()

    heads = args.heads or max(1, args.hidden // 64)
    config = NezhaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=heads, intermediate_size=args.intermediate or 4 * args.hidden)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = NezhaForSequenceClassification(config).eval()
    batches = make_batches(4, args.batch_size, args.length, args.vocab)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "model")
        print(f"exporting {args.layers} layers x {args.hidden} hidden ({model.num_parameters():,} parameters) ...",
              file=sys.stderr)
        start = time.perf_counter()
        export_model(Path(tmp) / "model", Path(tmp) / "onnx", "onnx", quantize="int8", check_lengths=(args.length,))
        print(f"exported and checked in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        fp32 = session(Path(tmp) / "onnx" / ONNX_NAME, threads=args.threads)
        int8 = session(Path(tmp) / "onnx" / INT8_NAME, threads=args.threads)

        def eager(b):
            with torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy()

        results = {"pytorch eager fp32": measure(eager, batches, args.seconds, args.batch_size),
                   "onnxruntime fp32": measure(lambda b: fp32.run(None, b), batches, args.seconds, args.batch_size),
                   "onnxruntime int8": measure(lambda b: int8.run(None, b), batches, args.seconds, args.batch_size)}
        reference = np.concatenate([eager(b) for b in batches])
        quantized = np.concatenate([int8.run(None, b)[0] for b in batches])

    base = results["pytorch eager fp32"]
    print(f"\nL = {args.length}, batch {args.batch_size}, {args.threads} threads, "
          f"torch {torch.__version__}, {config.num_hidden_layers} layers x {config.hidden_size} hidden")
    print(f"{'backend':<22}{'sentences/s':>14}{'x PyTorch':>12}")
    for name, rate in results.items():
        print(f"{name:<22}{rate:>14.1f}{rate / base:>12.2f}")
    diff = float(np.abs(reference - quantized).max())
    agreement = float(np.mean(reference.argmax(-1) == quantized.argmax(-1)))
    print(f"int8 vs PyTorch: max |diff| of the logits {diff:.3e}, argmax agreement {agreement:.3f}")
    if args.json:
        print(json.dumps({"length": args.length, "batch_size": args.batch_size, "threads": args.threads,
                          "layers": args.layers, "hidden": args.hidden, "sentences_per_s": results,
                          "ratio_vs_pytorch": {k: v / base for k, v in results.items()},
                          "int8_max_abs_diff": diff, "int8_argmax_agreement": agreement}))


if __name__ == "__main__":
    main()
