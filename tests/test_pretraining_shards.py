"""Sharded data preparation (`nezha tokenize/mask --shard I/N`) and `nezha pretrain` on several prepared directories:
the shards together are the unsharded instances, a run on them is the run on the unsharded data, and every bad
input is one line and exit code 2 with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from pretrain_fixtures import TINY_MODEL, write_masked_data
from task_fixtures import assert_one_line_error

from nezha_cli.cli import cli
from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.errors import ConfigError, DataError
from nezha_cli.pretraining.data import load_pretraining_data
from nezha_cli.pretraining.instances import create_pretraining_data
from nezha_cli.text import shards
from nezha_cli.text.dataset_files import iter_batches
from nezha_cli.text.pipeline import tokenize_corpus
from nezha_cli.text.shards import Shard

datasets = pytest.importorskip("datasets")
STRIPE = 40  # documents per stripe here: the corpus below has 12 stripes
BLOCK = 5_000  # tokens per block: several blocks per stripe, and stripes cut blocks
TINY = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "global_batch_size=8", "per_device_batch_size=4", "logging_steps=1", "eval_examples=16", "eval_steps=3",
    "optimizer=adamw", "learning_rate=0.01", "warmup_steps=1", "max_seq_length=64", "max_predictions_per_seq=10"]


def run(*args: str):
    return CliRunner().invoke(cli, ["--quiet", *args])


def rows(directory: Path) -> list[dict]:
    return pa.Table.from_batches(list(iter_batches(directory))).to_pylist()


def as_multiset(table: list[dict]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in table)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_documents, bert_vocab) -> Path:
    from nezha_cli.text.corpora import write_documents

    return write_documents(real_documents[:150] + real_documents[-300:], tmp_path_factory.mktemp("shards") / "c.txt")


@pytest.fixture(scope="module")
def tokenized(corpus, tmp_path_factory) -> dict:
    """The corpus tokenized whole and as shards 0/3, 1/3, 2/3."""
    root = tmp_path_factory.mktemp("tokenized")
    out = {"whole": tokenize_corpus([corpus], root / "whole", num_proc=1, show_progress=False,
                                    stripe_documents=STRIPE)}
    for i in range(3):
        out[i] = tokenize_corpus([corpus], root / f"shard-{i}", num_proc=1, show_progress=False,
                                 stripe_documents=STRIPE, shard=(i, 3))
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["static", "dynamic"])
def masked(request, tokenized, tmp_path_factory) -> dict:
    """The whole corpus masked, and each tokenized shard masked (2 processes for the whole, 1 for the shards)."""
    root = tmp_path_factory.mktemp("masked")
    options = dict(show_progress=False, block_tokens=BLOCK, dynamic=request.param, seed=5)
    out = {"whole": create_pretraining_data(tokenized["whole"], root / "whole", num_proc=2, **options)}
    for i in range(3):
        out[i] = create_pretraining_data(tokenized[i], root / f"shard-{i}", num_proc=1, **options)
    out["dynamic"] = request.param
    return out


# ------------------------------------------------------------------------------------------------ shards


def test_shard_parse_and_algebra():
    assert Shard.parse("2/3") == Shard(2, 3) and str(Shard(0, 4)) == "0/4"
    for bad, message in (("3/2", "the index must be 0 to 1"), ("0/0", "the count must be at least 1"),
                         ("x", "expected INDEX/COUNT"), ("-1/2", "expected INDEX/COUNT")):
        with pytest.raises(ConfigError, match=message):
            Shard.parse(bad)
    assert Shard(1, 2).overlaps(Shard(1, 4)) and not Shard(0, 2).overlaps(Shard(1, 4))
    assert Shard(1, 3).within(Shard(0, 2)) == Shard(4, 6) and Shard(1, 2).within(Shard(0, 4)) is None
    assert shards.as_shard((1, 3)) == shards.as_shard("1/3") == Shard(1, 3) and shards.as_shard(None) is None


def test_tokenized_shards_are_the_whole(tokenized):
    whole = rows(tokenized["whole"])
    parts = [row for i in range(3) for row in rows(tokenized[i])]
    assert sorted(parts, key=lambda r: r["doc_id"]) == whole  # doc ids count every document, in every shard
    documents = {i: {r["doc_id"] // STRIPE % 3 for r in rows(tokenized[i])} for i in range(3)}
    assert documents == {0: {0}, 1: {1}, 2: {2}}
    manifests = [json.loads((tokenized[i] / "manifest.json").read_text()) for i in ("whole", 0, 1, 2)]
    assert [m["shard"] for m in manifests] == [{"index": 0, "count": 1}] + [{"index": i, "count": 3} for i in range(3)]
    assert len({m["corpus"] for m in manifests}) == 1
    assert sum(m["counts"]["documents"] for m in manifests[1:]) == manifests[0]["counts"]["documents"] == 450


def test_three_shards_equal_the_unsharded_instances(masked):
    whole = rows(masked["whole"])
    parts = [rows(masked[i]) for i in range(3)]
    assert all(parts) and sum(map(len, parts)) == len(whole)
    assert as_multiset([r for part in parts for r in part]) == as_multiset(whole)  # masks, instance ids included
    manifest = json.loads((masked[1] / "manifest.json").read_text())
    assert manifest["shard"] == {"index": 1, "count": 3} and [s for s, _ in manifest["stripes"]] == [1, 4, 7, 10]
    if masked["dynamic"]:
        assert len({r["instance_id"] for r in whole}) == len(whole)


def test_mask_shard_of_the_whole_tokenized_data(masked, tokenized, tmp_path):
    options = dict(show_progress=False, block_tokens=BLOCK, dynamic=masked["dynamic"], seed=5, num_proc=1)
    for i in range(3):
        out = create_pretraining_data(tokenized["whole"], tmp_path / f"m{i}", shard=f"{i}/3", **options)
        assert rows(out) == rows(masked[i])
    # A tokenized shard sharded again: the stripes of both (k = 1 mod 3 and k = 0 mod 2: stripes 4 and 10).
    out = create_pretraining_data(tokenized[1], tmp_path / "nested", shard=(0, 2), **options)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shard"] == {"index": 4, "count": 6} and [s for s, _ in manifest["stripes"]] == [4, 10]
    with pytest.raises(ConfigError, match="none of whose documents"):
        create_pretraining_data(tokenized[1], tmp_path / "none", shard=(0, 3), **options)
    assert not (tmp_path / "none").exists()


def test_shards_load_as_the_unsharded_data(masked):
    whole = load_pretraining_data(masked["whole"], eval_examples=16)
    shards_ = load_pretraining_data([masked[2], masked[0], masked[1]], eval_examples=16)
    # Put back in corpus order: row for row the unsharded data, so the held-out set and a run are the same.
    assert shards_.train.to_list() == whole.train.to_list() and shards_.eval.to_list() == whole.eval.to_list()
    assert shards_.directories == [masked[2], masked[0], masked[1]]


def test_several_outputs_must_agree(masked, tmp_path):
    with pytest.raises(DataError, match="given to --data twice"):
        load_pretraining_data([masked[0], masked[1], masked[0]])
    with pytest.raises(DataError, match=r"shard 0/1 of the corpus overlaps shard 1/3"):
        load_pretraining_data([masked[1], masked["whole"]])
    copy = shutil.copytree(masked[1], tmp_path / "copy-of-1")
    with pytest.raises(DataError, match=r"copy-of-1: shard 1/3 of the corpus overlaps shard 1/3"):
        load_pretraining_data([masked[0], masked[1], copy])
    other = write_masked_data(tmp_path / "other", n=8, dynamic=masked["dynamic"])
    with pytest.raises(DataError, match="another vocab"):
        load_pretraining_data([masked[0], other])


# ------------------------------------------------------------------------------------------------ the command line


@pytest.fixture
def small_stripes(monkeypatch):
    monkeypatch.setattr(shards, "STRIPE_DOCUMENTS", STRIPE)


def test_three_machines_then_pretrain_equals_one(corpus, tmp_path, small_stripes):
    # N machines: `nezha tokenize --shard i/N`, `nezha mask`; then one `nezha pretrain --data` of them all.
    masked = []
    for i in range(3):
        result = run("tokenize", str(corpus), "-o", str(tmp_path / f"tok-{i}"), "--shard", f"{i}/3",
                     "--num-proc", "1")
        assert result.exit_code == 0, result.output
        result = run("mask", str(tmp_path / f"tok-{i}"), "-o", str(tmp_path / f"masked-{i}"), "--dynamic",
                     "--max-seq-length", "64", "--max-predictions-per-seq", "10", "--num-proc", "1")
        assert result.exit_code == 0, result.output
        masked.append(tmp_path / f"masked-{i}")
    assert run("tokenize", str(corpus), "-o", str(tmp_path / "tok"), "--num-proc", "1").exit_code == 0
    # The whole tokenized data masked as three shards on one machine is the same.
    result = run("mask", str(tmp_path / "tok"), "-o", str(tmp_path / "mask-shard-1"), "--shard", "1/3", "--dynamic",
                 "--max-seq-length", "64", "--max-predictions-per-seq", "10", "--num-proc", "1")
    assert result.exit_code == 0, result.output
    assert rows(tmp_path / "mask-shard-1") == rows(masked[1])
    result = run("mask", str(tmp_path / "tok"), "-o", str(tmp_path / "masked"), "--dynamic", "--max-seq-length", "64",
                 "--max-predictions-per-seq", "10", "--num-proc", "1")
    assert result.exit_code == 0, result.output

    common = ["--max-steps", "6", "--seed", "3", "--mixed-precision", "no", *TINY]
    result = run("pretrain", *[a for d in masked for a in ("--data", str(d))], "-o", str(tmp_path / "run-shards"),
                 *common)
    assert result.exit_code == 0, result.output
    result = run("pretrain", "--data", str(tmp_path / "masked"), "-o", str(tmp_path / "run-whole"), *common)
    assert result.exit_code == 0, result.output
    losses = [[(r["step"], r.get("loss"), r.get("eval_mlm_loss")) for r in read_metrics(tmp_path / d / "metrics.jsonl")]
              for d in ("run-shards", "run-whole")]
    assert losses[0] == losses[1] and any(loss is not None for _, loss, _ in losses[0])


@pytest.mark.parametrize("command", ["tokenize", "mask"])
@pytest.mark.parametrize("value, message", [("3/2", "the index must be 0 to 1"), ("0/0", "the count must be at "
                                            "least 1"), ("x", "expected INDEX/COUNT")])
def test_bad_shard(command, value, message, corpus, tokenized, tmp_path):
    source = corpus if command == "tokenize" else tokenized["whole"]
    result = run(command, str(source), "-o", str(tmp_path / "out"), "--shard", value)
    assert_one_line_error(result, "--shard", value, message)
    assert not (tmp_path / "out").exists()


def test_empty_shard_and_build_vocab(corpus, tokenized, tmp_path):
    # 450 documents are 1 stripe of the default 4,096: shard 1/2 holds none of them.
    assert_one_line_error(run("tokenize", str(corpus), "-o", str(tmp_path / "out"), "--shard", "1/2"),
                          "--shard 1/2: no documents", "use fewer shards")
    assert_one_line_error(run("tokenize", str(corpus), "-o", str(tmp_path / "out"), "--shard", "0/2",
                              "--build-vocab", "500"), "--shard 0/2 with --build-vocab", "--vocab")
    assert_one_line_error(run("mask", str(tokenized[0]), "-o", str(tmp_path / "out"), "--shard", "1/3"),
                          "holds shard 0/3 of its corpus")
    assert not (tmp_path / "out").exists()


def test_pretrain_refuses_data_that_do_not_go_together(masked, tmp_path):
    out = tmp_path / "run"

    def pretrain(*directories):
        return run("pretrain", *[a for d in directories for a in ("--data", str(d))], "-o", str(out),
                   "--max-steps", "1", *TINY)

    copy = shutil.copytree(masked[1], tmp_path / "copy-of-1")
    other_vocab = write_masked_data(tmp_path / "other-vocab", n=8, dynamic=masked["dynamic"])
    other_kind = write_masked_data(tmp_path / "other-kind", n=8, dynamic=not masked["dynamic"],
                                   vocab=masked[0] / "vocab.txt")
    longer = shutil.copytree(masked[2], tmp_path / "longer")
    manifest = json.loads((longer / "manifest.json").read_text())
    manifest["options"]["max_seq_length"] = 512
    (longer / "manifest.json").write_text(json.dumps(manifest))
    for directories, fragments in (
        ((masked[0], masked[0]), (str(masked[0]), "given to --data twice")),
        ((masked[0], masked[1], copy), (str(copy), "shard 1/3 of the corpus overlaps shard 1/3")),
        ((masked[0], other_vocab), (str(other_vocab), "another vocab", "vocab_sha256")),
        ((masked[0], other_kind), (str(other_kind), "masks, but", "--dynamic")),
        ((masked[0], longer), (str(longer), "max_seq_length is 512", "--max-seq-length")),
        ((masked[0], tmp_path / "nope"), ("nope: --data not found",)),
    ):
        assert_one_line_error(pretrain(*directories), *fragments)
        assert not out.exists()
