"""``nezha mask``: pretraining instances (NSP pairs, whole word masking) from a `nezha tokenize` output."""

from __future__ import annotations

from pathlib import Path

import click

from nezha_cli.cli import SHARD, SHARD_HELP


@click.command("mask")
@click.argument("data_dir", metavar="DATA", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory (a datasets.load_from_disk directory, manifest.json, vocab.txt).")
@click.option("--max-seq-length", type=click.IntRange(min=5), default=128, show_default=True,
              help="Tokens per instance, [CLS] and [SEP]s included.")
@click.option("--short-seq-prob", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of documents cut into shorter instances (a random length), as BERT does.")
@click.option("--max-predictions-per-seq", type=click.IntRange(min=1), default=20, show_default=True,
              help="Most masked tokens per instance.")
@click.option("--masked-lm-prob", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.15,
              show_default=True, help="Share of tokens masked (80% [MASK], 10% random token, 10% unchanged).")
@click.option("--dupe-factor", type=click.IntRange(min=1), default=1, show_default=True,
              help="Passes over the corpus, each with other instance boundaries and masks (BERT used 10 with "
                   "static masks; --dynamic gives new masks every epoch instead).")
@click.option("--whole-word-mask/--no-whole-word-mask", default=None,
              help="Mask whole jieba words [default: yes when the data has word_ids, i.e. was not tokenized "
                   "with --no-wwm].")
@click.option("--dynamic", is_flag=True,
              help="Write unmasked instances (with word_ids and instance_id); the pretraining collator masks them "
                   "anew each epoch with the same rules.")
@click.option("--seed", type=int, default=12345, show_default=True, help="Random seed; the output depends on it "
              "and the data only.")
@click.option("--num-proc", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: all CPU cores].")
@click.option("--shard", type=SHARD, default=None,
              help=SHARD_HELP + " A DATA tokenized with --shard is masked as the shard it is, without this option.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
def mask(ctx: click.Context, data_dir: Path, output_dir: Path, **options) -> None:
    """Make BERT pretraining instances from a `nezha tokenize` output DATA.

    \b
    Sentence pairs [CLS] A [SEP] B [SEP] with next sentence prediction (B follows A, or half the time comes
    from another document: next_sentence_label 1), and masked LM predictions over whole jieba words. OUT
    holds input_ids, token_type_ids, word_ids, masked_lm_positions, masked_lm_ids and next_sentence_label
    (--dynamic: unmasked, with instance_id), plus vocab.txt and manifest.json with statistics. Next step:
    `nezha pretrain --data OUT`.

    \b
    Examples:
      nezha mask data/tokenized -o data/masked
      nezha mask data/tokenized -o data/dynamic --dynamic --max-seq-length 512 --max-predictions-per-seq 80
      nezha mask data/tok-$RANK -o data/masked-$RANK       # a shard of `nezha tokenize --shard $RANK/4`
    """
    from nezha_cli.pretraining.instances import create_pretraining_data

    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    out = create_pretraining_data(data_dir, output_dir, show_progress=not quiet, **options)
    click.echo(str(out))
