"""Readers of every task layout, and the DataErrors for bad files."""

from __future__ import annotations

import json
import logging

import pytest
from task_fixtures import DATA, needs_data

from nezha_cli.errors import ConfigError, DataError, NezhaError
from nezha_cli.tasks import get_task, get_task_class, task_names


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ registry


def test_registry_names_and_aliases():
    assert task_names(with_aliases=False) == ["cmrc", "xnli", "lcqmc", "pd-ner", "chnsenti", "classification",
                                              "pair-classification", "ner", "qa", "multiple-choice"]
    assert get_task_class("peoples-daily-ner") is get_task_class("msra-ner") is get_task_class("PD-NER")
    assert get_task_class("cmrc2018").name == "cmrc"
    with pytest.raises(ConfigError, match="unknown task 'squad'"):
        get_task_class("squad")
    with pytest.raises(ConfigError, match="task lcqmc does not take --text-column"):
        get_task("lcqmc", text_column="q")


def test_paper_hyperparameters():
    # Table 3 of the paper: lr 3e-5; (max_seq_length, epochs) per task.
    expected = {"cmrc": (384, 2), "xnli": (128, 3), "lcqmc": (128, 5), "pd-ner": (256, 5), "chnsenti": (256, 10)}
    for name, (length, epochs) in expected.items():
        defaults = get_task_class(name).defaults
        assert (defaults.max_seq_length, defaults.epochs, defaults.learning_rate) == (length, epochs, 3e-5)


# ------------------------------------------------------------------------------------------ classification


def test_lcqmc_with_and_without_header(tmp_path):
    task = get_task("lcqmc")
    rows = "喜欢打篮球的男生喜欢什么样的女生\t爱打篮球的男生喜欢什么样的女生\t1\n我手机丢了\t手机怎么找回\t0\n"
    plain = task.read(write(tmp_path / "a.tsv", rows))
    headed = task.read(write(tmp_path / "b.tsv", "text_a\ttext_b\tlabel\n" + rows))
    assert [(e.text_a[:2], e.text_b[:2], e.label) for e in plain] == [("喜欢", "爱打", "1"), ("我手", "手机", "0")]
    assert [(e.text_a, e.text_b, e.label) for e in headed] == [(e.text_a, e.text_b, e.label) for e in plain]


def test_classification_bad_files(tmp_path):
    task = get_task("lcqmc")
    with pytest.raises(DataError, match=r"c\.tsv:2: label '2' is not in the label set \(0, 1\)"):
        task.read(write(tmp_path / "c.tsv", "好\t好\t1\n好\t坏\t2\n"))
    with pytest.raises(DataError, match=r"d\.tsv:1: expected 3 tab-separated fields .* found 2"):
        task.read(write(tmp_path / "d.tsv", "好\t1\n"))
    # A misnamed column: the header is recognised (text_b, label) but text_a is missing.
    with pytest.raises(DataError, match=r"no text_a column .* header has sentence_a, text_b, label"):
        task.read(write(tmp_path / "e.tsv", "sentence_a\ttext_b\tlabel\n好\t好\t1\n"))
    with pytest.raises(DataError, match="no examples found"):
        task.read(write(tmp_path / "f.tsv", "text_a\ttext_b\tlabel\n"))
    with pytest.raises(DataError, match="not UTF-8"):
        (tmp_path / "g.tsv").write_bytes("好\t坏\t1\n".encode("gbk"))
        task.read(tmp_path / "g.tsv")
    with pytest.raises(DataError, match="file not found"):
        task.read(tmp_path / "missing.tsv")


def test_test_file_without_labels(tmp_path):
    task = get_task("chnsenti")
    path = write(tmp_path / "test.tsv", "text_a\n很好\n")
    with pytest.raises(DataError, match="no label column"):
        task.read(path)
    examples = task.read(path, require_labels=False)
    assert examples[0].label is None and not task.has_references(examples)


def test_xnli_layouts(tmp_path):
    task = get_task("xnli")
    mt = task.read(write(tmp_path / "train.tsv", "premise\thypo\tlabel\n他来了\t他没来\tcontradictory\n"
                                                 "他来了\t有人来了\tentailment\n"))
    assert [e.label for e in mt] == ["contradiction", "entailment"]
    # xnli.dev.tsv: many columns, all languages; only Chinese rows are kept.
    header = "language\tgold_label\tsentence1_binary_parse\tsentence1\tsentence2\tpairID"
    dev = task.read(write(tmp_path / "xnli.dev.tsv", f"{header}\nen\tneutral\t-\tHe came\tSomeone came\t1\n"
                                                      "zh\tneutral\t-\t他来了\t天晴了\t1\n"))
    assert [(e.text_a, e.text_b, e.label) for e in dev] == [("他来了", "天晴了", "neutral")]
    # Headerless, with label ids 0/1/2 in the order contradiction, entailment, neutral.
    plain = task.read(write(tmp_path / "c.tsv", "甲\t乙\t2\n甲\t乙\t0\n"))
    assert [e.label for e in plain] == ["neutral", "contradiction"]
    with pytest.raises(DataError, match="label 'maybe'"):
        task.read(write(tmp_path / "d.tsv", "甲\t乙\tmaybe\n"))


@needs_data
def test_chnsenti_real_files():
    task = get_task("chnsenti")
    dev = task.read(task.split_file(DATA / "chnsenticorp", "dev"))
    assert len(dev) == 1200 and {e.label for e in dev} == {"0", "1"}
    assert dev[0].text_b is None and dev[0].text_a.startswith("這間酒店")


# ------------------------------------------------------------------------------------------------- NER


def test_pd_ner_tsv_and_conll_layouts(tmp_path):
    task = get_task("pd-ner")
    tsv = task.read(write(tmp_path / "a.tsv", "text_a\tlabel\n张 三 在 北 京\tB-PER I-PER O B-LOC I-LOC\n"))
    conll = task.read(write(tmp_path / "example.train", "张 B-PER\n三 I-PER\n在 O\n\n北 B-LOC\n京 I-LOC\n\n"))
    assert tsv[0].tokens == list("张三在北京") and tsv[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    assert [e.tokens for e in conll] == [list("张三在"), list("北京")]
    assert conll[1].tags == ["B-LOC", "I-LOC"]


def test_pd_ner_bad_files(tmp_path):
    task = get_task("pd-ner")
    with pytest.raises(DataError, match=r"a\.tsv:2: 3 characters but 2 tags"):
        task.read(write(tmp_path / "a.tsv", "text_a\tlabel\n张 三 在\tB-PER I-PER\n"))
    with pytest.raises(DataError, match=r"b\.tsv:2: label 'B-MISC' is not in the label set"):
        task.read(write(tmp_path / "b.tsv", "text_a\tlabel\n张 三\tB-MISC I-MISC\n"))
    with pytest.raises(DataError, match="no examples found"):
        task.read(write(tmp_path / "c.tsv", "text_a\tlabel\n"))
    with pytest.raises(DataError, match=r"no label column"):
        task.read(write(tmp_path / "d.tsv", "text_a\ttags_x\n张\tO\n"))


@needs_data
def test_pd_ner_real_files():
    task = get_task("pd-ner")
    dev = task.read(DATA / "peoples_daily_ner" / "dev.tsv")
    assert len(dev) == 2318
    assert all(len(e.tokens) == len(e.tags) for e in dev)
    assert max(len(e.tokens) for e in dev) > 256  # long sentences exist: windows are needed
    assert task.labels(dev) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


# ------------------------------------------------------------------------------------------------- CMRC


def squad(qas, context="《战国无双3》是由光荣和ω-force开发的。"):
    return {"version": "v1.0", "data": [{"id": "D", "paragraphs": [{"id": "P", "context": context, "qas": qas}]}]}


def test_cmrc_answer_start_mismatch_counted_and_reported(tmp_path, caplog):
    qas = [
        {"id": "Q1", "question": "谁开发的？", "answers": [{"text": "光荣和ω-force", "answer_start": 9}]},
        # off by 3: realigned to the occurrence of the text
        {"id": "Q2", "question": "什么游戏？", "answers": [{"text": "战国无双3", "answer_start": 4}]},
        # not in the context at all: kept for scoring, not used for training
        {"id": "Q3", "question": "哪年？", "answers": [{"text": "2010年", "answer_start": -1}]},
    ]
    task = get_task("cmrc")
    with caplog.at_level(logging.WARNING):
        examples = task.read(write(tmp_path / "dev.json", json.dumps(squad(qas), ensure_ascii=False)))
    assert [e.train_answer for e in examples] == [(9, 19), (1, 6), None]
    assert "2 of 3 answers have an answer_start that does not match the context (first: Q2); 1 realigned" in \
        caplog.text
    assert "1 not found in the context" in caplog.text


def test_cmrc_bad_files(tmp_path):
    task = get_task("cmrc")
    bad = [{"id": "Q1", "question": "?", "answers": [{"text": "不存在", "answer_start": 3}]}]
    with pytest.raises(DataError, match="no answer_start matches its context"):
        task.read(write(tmp_path / "a.json", json.dumps(squad(bad), ensure_ascii=False)))
    with pytest.raises(DataError, match="not a SQuAD-style file"):
        task.read(write(tmp_path / "b.json", json.dumps({"data": [{"context": "x"}]})))
    with pytest.raises(NezhaError, match="not valid JSON"):
        task.read(write(tmp_path / "c.json", "{"))
    with pytest.raises(DataError, match="has no answers"):
        task.read(write(tmp_path / "d.json", json.dumps(squad([{"id": "Q", "question": "?", "answers": []}]))))


@needs_data
def test_cmrc_real_dev_file():
    examples = get_task("cmrc").read(DATA / "cmrc2018" / "dev.json")
    assert len(examples) == 3219
    assert max(len(e.answers) for e in examples) == 3


# ----------------------------------------------------------------------------------------------- generic


def test_generic_classification_columns(tmp_path):
    path = write(tmp_path / "train.csv", "review,stars\n很好,5\n很差,1\n")
    task = get_task("classification", text_column="review", label_column="stars")
    examples = task.read(path)
    assert [(e.text_a, e.label) for e in examples] == [("很好", "5"), ("很差", "1")]
    assert task.labels(examples) == ["1", "5"]
    with pytest.raises(DataError, match=r"no column 'text' \(columns: review, stars\); rename it or pass "
                                         r"--text-column"):
        get_task("classification", label_column="stars").read(path)
    with pytest.raises(DataError, match=r"row 2: label '1' is not in the label set"):
        task.read(path, labels=["5"])


def test_generic_pair_classification_jsonl(tmp_path):
    path = write(tmp_path / "dev.jsonl", '{"sentence1": "甲", "sentence2": "乙", "label": 1}\n')
    examples = get_task("pair-classification").read(path)
    assert (examples[0].text_a, examples[0].text_b, examples[0].label) == ("甲", "乙", "1")


def test_generic_ner_json_lists_and_conll(tmp_path):
    task = get_task("ner")
    rows = [{"tokens": ["EU", "rejects", "German"], "ner_tags": ["B-ORG", "O", "B-MISC"]}]
    path = write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    examples = task.read(path)
    assert examples[0].tokens == ["EU", "rejects", "German"]
    assert task.labels(examples) == ["O", "B-MISC", "B-ORG"]
    conll = task.read(write(tmp_path / "train.conll", "EU NNP B-ORG\nrejects VBZ O\n\n"))
    assert conll[0].tags == ["B-ORG", "O"]
    with pytest.raises(DataError, match="tags must be names"):
        task.read(write(tmp_path / "ids.jsonl", '{"tokens": ["a"], "ner_tags": [3]}\n'))
    # Ids: the id column, else the row number, which a row without tokens (left out) does not shift.
    rows = [{"tokens": ["a"], "tags": ["O"]}, {"tokens": [], "tags": []}, {"tokens": ["b"], "tags": ["B-X"]}]
    numbered = write(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert [e.guid for e in task.read(numbered)] == ["rows-0", "rows-2"]
    named = write(tmp_path / "named.jsonl",
                  "".join(json.dumps({**r, "sid": f"s{i}"}) + "\n" for i, r in enumerate(rows)))
    assert [e.guid for e in get_task("ner", id_column="sid").read(named)] == ["s0", "s2"]
    with pytest.raises(DataError, match=r"rows\.jsonl:row 3: label 'B-X' is not in the label set"):
        task.read(numbered, labels=["O"])


def test_generic_qa_flat_rows(tmp_path):
    row = {"id": "q1", "question": "谁？", "context": "张三来了。", "answers": {"text": ["张三"], "answer_start": [0]}}
    examples = get_task("qa").read(write(tmp_path / "train.jsonl", json.dumps(row, ensure_ascii=False) + "\n"))
    assert examples[0].train_answer == (0, 2) and examples[0].qid == "q1"


def test_generic_multiple_choice(tmp_path):
    rows = [{"question": "1+1=?", "a": "1", "b": "2", "label": 1}, {"question": "2+2=?", "a": "4", "b": "5",
                                                                      "label": 0}]
    path = write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    examples = get_task("multiple-choice", choices_column="a,b").read(path)
    assert [(e.question, e.choices, e.label) for e in examples] == [("1+1=?", ["1", "2"], 1),
                                                                    ("2+2=?", ["4", "5"], 0)]
    # A list column, and the label given as the text of the right choice.
    by_text = write(tmp_path / "dev.jsonl", '{"context": "甲", "choices": ["x", "y"], "label": "y"}\n')
    assert get_task("multiple-choice").read(by_text)[0].label == 1
    with pytest.raises(DataError, match="label 7 is neither a choice index"):
        get_task("multiple-choice", choices_column="a,b").read(
            write(tmp_path / "bad.jsonl", '{"question": "?", "a": "x", "b": "y", "label": 7}\n'))


def test_csv_cells_are_read_as_written(tmp_path):
    # pandas would read 01/002 as the numbers 1/2 and the ids as 1/2: labels and ids changed without a word.
    path = write(tmp_path / "train.csv", "id,text,label\n0001,好的,01\n0002,不好,002\n")
    examples = get_task("classification").read(path)
    assert [(e.guid, e.label) for e in examples] == [("0001", "01"), ("0002", "002")]
    tsv = write(tmp_path / "train.tsv", "\ufefftext\tlabel\n\"好\"的\t01\n")
    assert [(e.text_a, e.label) for e in get_task("classification").read(tsv)] == [('"好"的', "01")]
    with pytest.raises(DataError, match=r"row 1 has no 'label'"):
        get_task("classification").read(write(tmp_path / "empty_label.csv", "text,label\n好,\n"))


def test_table_files_that_cannot_be_read(tmp_path):
    with pytest.raises(DataError, match=r"header\.csv: no rows below the header \(empty split\)"):
        get_task("classification").read(write(tmp_path / "header.csv", "text,label\n"))
    bad = write(tmp_path / "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON \(Expecting property name"):
        get_task("classification").read(bad)
    document = write(tmp_path / "bad.json", '[\n {"text": "a", "label": 1},\n {"text": "b" "label": 2}\n]\n')
    with pytest.raises(DataError, match=r"bad\.json:3: not valid JSON \(Expecting ',' delimiter at column 15\); "
                                        r"fix the file"):
        get_task("classification").read(document)
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty \(empty split\)"):
        get_task("classification").read(write(tmp_path / "empty.jsonl", ""))


def test_multiple_choice_rows_need_all_their_choices(tmp_path):
    rows = [{"question": "?", "a": "x", "b": "y", "c": "z", "label": 0},
            {"question": "?", "a": "x", "b": "y", "label": 1}]
    path = write(tmp_path / "mc.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"mc\.jsonl: row 2: an empty choice"):
        get_task("multiple-choice", choices_column="a,b,c").read(path)
    lists = write(tmp_path / "lists.jsonl", '{"choices": ["x", "y"], "label": 0}\n{"choices": ["x"], "label": 0}\n')
    with pytest.raises(DataError, match=r"lists\.jsonl: row 2: 1 choices, row 1 has 2"):
        get_task("multiple-choice").read(lists)
    csv_file = write(tmp_path / "mc.csv", "question,a,b,label\n1-1=?,2,0,0\n")
    # A string label is the text of a choice first (here choice 1), as in JSON; a JSON number is an index.
    assert get_task("multiple-choice", choices_column="a,b").read(csv_file)[0].label == 1
