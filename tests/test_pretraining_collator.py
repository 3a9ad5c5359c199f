from __future__ import annotations

import numpy as np
import pytest
import torch

from nezha_cli.pretraining.collator import PretrainingCollator, special_ids_of
from nezha_cli.pretraining.instances import create_pretraining_data
from nezha_cli.text.pipeline import tokenize_corpus
from nezha_cli.text.vocab import SpecialIds

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, real_documents, bert_vocab):
    from nezha_cli.text.corpora import write_documents

    root = tmp_path_factory.mktemp("collator")
    corpus = write_documents(real_documents[:30] + real_documents[-100:], root / "corpus.txt")
    tok = tokenize_corpus([corpus], root / "tok", num_proc=1, show_progress=False)
    static = create_pretraining_data(tok, root / "static", num_proc=1, show_progress=False)
    dynamic = create_pretraining_data(tok, root / "dynamic", dynamic=True, num_proc=1, show_progress=False)
    return static, dynamic


def test_static_batches_pad_the_stored_masks(outputs):
    static, _ = outputs
    data = datasets.load_from_disk(str(static))
    collator = PretrainingCollator.from_manifest(static)
    assert not collator.dynamic
    examples = [data[i] for i in range(5)]
    batch = collator(examples)
    longest = max(len(e["input_ids"]) for e in examples)
    predictions = max(len(e["masked_lm_positions"]) for e in examples)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (5, longest)
    assert batch["masked_lm_positions"].shape == batch["masked_lm_labels"].shape == (5, predictions)
    assert batch["next_sentence_label"].tolist() == [e["next_sentence_label"] for e in examples]
    assert all(t.dtype == torch.long for t in batch.values())
    for i, e in enumerate(examples):
        n, p = len(e["input_ids"]), len(e["masked_lm_positions"])
        assert batch["input_ids"][i, :n].tolist() == e["input_ids"] and (batch["input_ids"][i, n:] == 0).all()
        assert batch["attention_mask"][i].sum() == n
        assert batch["masked_lm_positions"][i, :p].tolist() == e["masked_lm_positions"]
        assert batch["masked_lm_labels"][i, :p].tolist() == e["masked_lm_ids"]
        assert (batch["masked_lm_positions"][i, p:] == 0).all() and (batch["masked_lm_labels"][i, p:] == -100).all()
    assert PretrainingCollator(static / "vocab.txt", pad_to_multiple_of=8)(examples)["input_ids"].shape[1] % 8 == 0


def test_dynamic_masks_depend_on_seed_epoch_and_instance_only(outputs):
    _, dynamic = outputs
    data = datasets.load_from_disk(str(dynamic))
    collator = PretrainingCollator.from_manifest(dynamic, seed=42)
    assert collator.dynamic and collator.seed == 42
    examples = [data[i] for i in range(8)]
    batch = collator(examples)
    # The same instance gets the same mask in another batch, in another order, from another collator.
    other = PretrainingCollator.from_manifest(dynamic, seed=42)(list(reversed(examples[2:6])) + [data[20]])
    for j, i in enumerate([5, 4, 3, 2]):
        n = len(examples[i]["input_ids"])
        assert other["input_ids"][j, :n].tolist() == batch["input_ids"][i, :n].tolist()
        p = int((batch["masked_lm_labels"][i] != -100).sum())
        assert other["masked_lm_positions"][j, :p].tolist() == batch["masked_lm_positions"][i, :p].tolist()
    # The labels are the original tokens at the masked positions.
    for i, e in enumerate(examples):
        p = int((batch["masked_lm_labels"][i] != -100).sum())
        positions = batch["masked_lm_positions"][i, :p].tolist()
        assert batch["masked_lm_labels"][i, :p].tolist() == [e["input_ids"][q] for q in positions]
        assert p >= 1 and all(e["word_ids"][q] >= 0 for q in positions)
    # A new epoch, a new mask; back to the first epoch, the first mask.
    collator.set_epoch(1)
    assert not torch.equal(collator(examples)["input_ids"], batch["input_ids"])
    collator.set_epoch(0)
    assert torch.equal(collator(examples)["input_ids"], batch["input_ids"])
    assert not torch.equal(PretrainingCollator.from_manifest(dynamic, seed=43)(examples)["input_ids"],
                           batch["input_ids"])


def test_dynamic_masking_follows_the_whole_word_rules(outputs):
    _, dynamic = outputs
    data = datasets.load_from_disk(str(dynamic))
    collator = PretrainingCollator.from_manifest(dynamic)
    masked = tokens = partial = mask_token = 0
    for start in range(0, len(data), 64):
        examples = [data[i] for i in range(start, min(start + 64, len(data)))]
        batch = collator(examples)
        for i, e in enumerate(examples):
            words = np.asarray(e["word_ids"])
            p = int((batch["masked_lm_labels"][i] != -100).sum())
            positions = batch["masked_lm_positions"][i, :p].numpy()
            chosen = np.zeros(len(words), bool)
            chosen[positions] = True
            partial += np.isin(words[~chosen & (words >= 0)], words[chosen]).sum()
            masked += p
            tokens += len(words)
            mask_token += int((batch["input_ids"][i, positions] == 103).sum())
    assert partial == 0
    assert abs(masked / tokens - 0.15) < 0.01
    assert abs(mask_token / masked - 0.8) < 0.03


def test_dynamic_needs_instance_ids(outputs):
    from nezha_cli.errors import DataError

    static, _ = outputs
    data = datasets.load_from_disk(str(static))
    with pytest.raises(DataError, match="instance_id"):
        PretrainingCollator(static, dynamic=True)([data[0]])


def test_special_ids_from_anything(outputs, bert_vocab):
    from nezha_cli.text.tokenizer import BertTokenizer
    from nezha_cli.text.vocab import Vocab

    expected = SpecialIds(0, 100, 101, 102, 103, 21128)
    assert special_ids_of(bert_vocab) == special_ids_of(outputs[0]) == expected
    assert special_ids_of(Vocab.from_file(bert_vocab)) == special_ids_of(BertTokenizer(bert_vocab)) == expected
    assert special_ids_of({"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103, "vocab_size": 21128}) == expected


def test_the_model_takes_the_batch(outputs):
    from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining

    _, dynamic = outputs
    data = datasets.load_from_disk(str(dynamic))
    batch = PretrainingCollator.from_manifest(dynamic)([data[i] for i in range(4)])
    config = NezhaConfig(vocab_size=21128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_relative_position=16)
    model = NezhaForPreTraining(config)
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"],
                masked_lm_positions=batch["masked_lm_positions"], labels=batch["masked_lm_labels"],
                next_sentence_label=batch["next_sentence_label"])
    assert torch.isfinite(out.loss)
    assert out.prediction_logits.shape[:2] == batch["masked_lm_positions"].shape


def test_dataloader_workers_give_the_same_masks(outputs):
    _, dynamic = outputs
    data = datasets.load_from_disk(str(dynamic)).select(range(16))
    collator = PretrainingCollator.from_manifest(dynamic)
    serial = [b["input_ids"] for b in torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collator)]
    parallel = [b["input_ids"] for b in torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collator,
                                                                     num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
