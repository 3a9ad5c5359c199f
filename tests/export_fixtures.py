"""Tiny model directories and released-style checkpoints (TF bundle, NEZHA-PyTorch) for the export/import tests.

The TensorFlow names are written out here from the released NEZHA/BERT checkpoints' naming, independently of the
mapping in ``nezha_cli.interchange.convert``, so that the import tests check that mapping rather than repeat it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nezha_cli.modeling import MODEL_CLASSES, NezhaConfig

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_relative_position=8, max_position_embeddings=64)


def write_vocab(path: Path, size: int = TINY["vocab_size"]) -> Path:
    path.write_text("".join(t + "\n" for t in SPECIAL + [f"t{i}" for i in range(size - len(SPECIAL))]),
                    encoding="utf-8")
    return path


def tiny_model(name: str = "NezhaForSequenceClassification", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = MODEL_CLASSES[name](NezhaConfig(**{**TINY, **overrides})).eval()
    # Non-zero biases everywhere, so that a bias mapped to the wrong place cannot go unnoticed.
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias"):
                param.normal_(0.0, 0.1)
    return model


def model_dir(tmp_path: Path, name: str = "NezhaForSequenceClassification", vocab: bool = True, **overrides) -> Path:
    directory = tmp_path / f"model-{name}"
    tiny_model(name, **overrides).save_pretrained(directory)
    if vocab:
        write_vocab(directory / "vocab.txt")
    return directory


def batch(length: int = 12, vocab_size: int = TINY["vocab_size"]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(1, vocab_size, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 3:] = 0
    types = torch.zeros(2, length, dtype=torch.long)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# ------------------------------------------------------------------------------------------ released formats


def tf_tensors(model, optimizer_slots: bool = True) -> dict[str, np.ndarray]:
    """``model``'s weights under the released TensorFlow names (dense kernels stored [in, out])."""
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    body = "nezha." if any(k.startswith("nezha.") for k in sd) else ""
    out: dict[str, np.ndarray] = {}

    def dense(tf: str, pt: str) -> None:
        out[f"{tf}/kernel"] = sd[f"{pt}.weight"].T.copy()
        out[f"{tf}/bias"] = sd[f"{pt}.bias"]

    def layer_norm(tf: str, pt: str) -> None:
        out[f"{tf}/gamma"] = sd[f"{pt}.weight"]
        out[f"{tf}/beta"] = sd[f"{pt}.bias"]

    out["bert/embeddings/word_embeddings"] = sd[f"{body}embeddings.word_embeddings.weight"]
    out["bert/embeddings/token_type_embeddings"] = sd[f"{body}embeddings.token_type_embeddings.weight"]
    layer_norm("bert/embeddings/LayerNorm", f"{body}embeddings.LayerNorm")
    for i in range(model.config.num_hidden_layers):
        tf, pt = f"bert/encoder/layer_{i}", f"{body}encoder.layer.{i}"
        for part in ("query", "key", "value"):
            dense(f"{tf}/attention/self/{part}", f"{pt}.attention.self.{part}")
        dense(f"{tf}/attention/output/dense", f"{pt}.attention.output.dense")
        layer_norm(f"{tf}/attention/output/LayerNorm", f"{pt}.attention.output.LayerNorm")
        dense(f"{tf}/intermediate/dense", f"{pt}.intermediate.dense")
        dense(f"{tf}/output/dense", f"{pt}.output.dense")
        layer_norm(f"{tf}/output/LayerNorm", f"{pt}.output.LayerNorm")
    if f"{body}pooler.dense.weight" in sd:
        dense("bert/pooler/dense", f"{body}pooler.dense")
    if "cls.predictions.bias" in sd:
        dense("cls/predictions/transform/dense", "cls.predictions.transform.dense")
        layer_norm("cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm")
        out["cls/predictions/output_bias"] = sd["cls.predictions.bias"]
    if "cls.seq_relationship.weight" in sd:
        out["cls/seq_relationship/output_weights"] = sd["cls.seq_relationship.weight"]  # [2, hidden]: as is
        out["cls/seq_relationship/output_bias"] = sd["cls.seq_relationship.bias"]
    if "classifier.weight" in sd:  # BERT's run_classifier.py head
        out["output_weights"] = sd["classifier.weight"]
        out["output_bias"] = sd["classifier.bias"]
    if optimizer_slots:
        for name in list(out):
            out[f"{name}/adam_m"] = np.zeros_like(out[name])
            out[f"{name}/adam_v"] = np.ones_like(out[name])
        out["global_step"] = np.array(900000, dtype=np.int64)
    return out


def bert_config(model) -> dict:
    c = model.config
    return {"attention_probs_dropout_prob": 0.1, "hidden_act": c.hidden_act, "hidden_dropout_prob": 0.1,
            "hidden_size": c.hidden_size, "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
            "max_position_embeddings": 512, "max_relative_position": c.max_relative_position,
            "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
            "type_vocab_size": c.type_vocab_size, "vocab_size": c.vocab_size, "use_relative_position": True}


def write_tf_release(directory: Path, tensors: dict[str, np.ndarray], config: dict, step: int = 900000,
                     block_size: int = 1024) -> Path:
    """A directory laid out like the NEZHA TensorFlow releases: checkpoint state, bundle, config, vocab."""
    from tf_bundle_writer import write_bundle

    directory.mkdir(parents=True, exist_ok=True)
    write_bundle(directory / f"model.ckpt-{step}", tensors, block_size=block_size)
    (directory / "checkpoint").write_text(f'model_checkpoint_path: "model.ckpt-{step}"\n'
                                          f'all_model_checkpoint_paths: "model.ckpt-{step}"\n', encoding="utf-8")
    (directory / "bert_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_vocab(directory / "vocab.txt", config["vocab_size"])
    return directory


def nezha_pytorch_state_dict(model) -> dict[str, torch.Tensor]:
    """``model``'s weights as NEZHA-PyTorch / pytorch-pretrained-bert saved them: ``bert.`` prefix, LayerNorm
    gamma/beta, the tied decoder weight written out."""
    out = {}
    for name, tensor in model.state_dict().items():
        name = "bert." + name[len("nezha."):] if name.startswith("nezha.") else name
        if ".LayerNorm." in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        out[name] = tensor.clone()
    return out
