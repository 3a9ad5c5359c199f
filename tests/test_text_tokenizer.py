"""The tokenizer is transformers' BertTokenizer, id for id, and its offsets and word ids are right."""

from __future__ import annotations

import random
import unicodedata

import pytest

from nezha_cli.text.tokenizer import BasicTokenizer, BertTokenizer

EDGE_CASES = [
    "Héllo WORLD, naïve café! ΑΣ.Β ΟΔΟΣ İstanbul",  # accents, final sigma, dotted capital I
    "[MASK]是[UNK]abc[SEP]def [CLS] [mask] [MASK][MASK]",  # special tokens written in the text
    "iPhone6s很好用😀👍🏻，价格￥３９９９元。",  # emoji with a skin tone, full-width digits
    "e\u0301x \u00a0a\u200bb\u3000c\tx\x00y\ufffdz\x0bq\x1cr\x85s",  # decomposed accent, spaces, controls
    "ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３ ｍａｘ",
    "a" * 150 + " ok " + "中" * 120,  # a word over max_input_chars_per_word
    "ﬁne ligature ǅ Ⅻ ㎏ ℃",
    "\u2028x\u2029y",
    "가\u11a8 각 ﾊﾝｶｸ ひらがな カタカナ",  # Hangul jamo composed by NFC, kana
    "<\u0338 =\u0338 ≮ 中\u0301文 !\u0301",  # NFC composition with punctuation, marks after CJK
    "\U00020000\U0002a6d6\U0002f800 \U000e0001 \U0010ffff",  # astral CJK, tags, private use
    "",
    "   ",
    "www.example.com/a?b=1&c=2 user@mail.com 3.14% -5 +7 #tag $9.99",
]


def _mixed_lines(real_lines: list[str], count: int, seed: int = 0) -> list[str]:
    """Real sentences spliced with English, digits, full-width punctuation and emoji."""
    rng = random.Random(seed)
    inserts = ["😀", "👍🏻", "❤️", "🇨🇳", "iPhone 13 Pro", "COVID-19", "GPT-4o", "２０２４年", "１２：３０",
               "￥６，９９９", "3.5GHz", "Ｈｅｌｌｏ！", "「引号」", "『书名』", "……", "——", "No.1", "ＣＰＵ", "Wi-Fi",
               "5G", "naïve"]
    out = []
    for _ in range(count):
        words = list(rng.choice(real_lines))
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randint(0, len(words)), rng.choice(inserts))
        out.append("".join(words))
    return out


@pytest.fixture(scope="module")
def tokenizer(bert_vocab):
    return BertTokenizer(bert_vocab)


@pytest.fixture(scope="module")
def reference(bert_vocab):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(str(bert_vocab), do_lower_case=True)


@pytest.fixture(scope="module")
def chnsenti_lines():
    from pathlib import Path

    path = Path(__file__).parents[1].parent / "shared" / "data" / "chnsenticorp" / "dev.tsv"
    if not path.is_file():
        return []
    return [line.split("\t", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines()[1:]][:1000]


@pytest.mark.slow
def test_ids_equal_transformers_bert_tokenizer_on_real_text(tokenizer, reference, real_lines, chnsenti_lines):
    lines = real_lines[::2] + chnsenti_lines + _mixed_lines(real_lines, 1000) + EDGE_CASES
    assert len(lines) >= 10_000
    mismatches = []
    for line in lines:
        expected = reference.encode(line, add_special_tokens=False)
        if tokenizer.encode(line) != expected or tokenizer.encode_with_offsets(line).ids != expected:
            mismatches.append(line)
    assert not mismatches, mismatches[:5]


def test_edge_cases_equal_transformers(tokenizer, reference):
    for line in EDGE_CASES:
        expected = reference.tokenize(line)
        assert tokenizer.tokenize(line) == expected, line
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode_with_offsets(line).ids) == expected, line


def test_uncased_tokenizer_keeps_case(bert_vocab, reference):
    transformers = pytest.importorskip("transformers")
    cased = transformers.BertTokenizer(str(bert_vocab), do_lower_case=False)
    ours = BertTokenizer(bert_vocab, do_lower_case=False)
    for line in EDGE_CASES + ["NEZHA 模型 Ｈｅｌｌｏ Café"]:
        assert ours.encode(line) == cased.encode(line, add_special_tokens=False), line


def test_basic_tokenizer_matches_transformers(real_lines):
    transformers = pytest.importorskip("transformers")
    reference = transformers.models.bert.tokenization_bert.BasicTokenizer(do_lower_case=True)
    ours = BasicTokenizer()
    for line in real_lines[:300] + EDGE_CASES[2:]:
        assert ours.tokenize(line) == reference.tokenize(line), line


def test_offsets_point_at_the_original_text(tokenizer, real_lines):
    for line in real_lines[:2000] + _mixed_lines(real_lines, 200, seed=1):
        encoding = tokenizer.encode_with_offsets(line)
        assert len(encoding.ids) == len(encoding.offsets)
        previous_end = 0
        for token, (start, end) in zip(tokenizer.convert_ids_to_tokens(encoding.ids), encoding.offsets):
            assert previous_end <= start < end <= len(line)
            previous_end = end if not token.startswith("##") else previous_end
            if token != "[UNK]":
                span = unicodedata.normalize("NFD", line[start:end].lower())
                span = "".join(c for c in span if unicodedata.category(c) != "Mn")
                assert span == token.removeprefix("##"), (line, token, line[start:end])


def test_offsets_of_a_word_split_into_pieces(tokenizer):
    text = "买了iPhone6s，３９９９元"
    encoding = tokenizer.encode_with_offsets(text)
    spans = [text[s:e] for s, e in encoding.offsets]
    assert spans[:2] == ["买", "了"]
    assert "".join(spans[2:4]) == "iPhone6s" and tokenizer.convert_ids_to_tokens(encoding.ids[3]).startswith("##")
    assert spans[-1] == "元"


def test_offsets_with_special_tokens_and_removed_characters(tokenizer):
    text = "a\x00b [MASK] 中\u200b文"
    encoding = tokenizer.encode_with_offsets(text)
    tokens = tokenizer.convert_ids_to_tokens(encoding.ids)
    spans = [text[s:e] for s, e in encoding.offsets]
    assert tokens == ["ab", "[MASK]", "中", "文"]
    assert spans == ["a\x00b", "[MASK]", "中", "文"]


def test_conversions_and_special_tokens(tokenizer):
    ids = tokenizer.encode("中文")
    assert tokenizer.convert_ids_to_tokens(ids) == ["中", "文"]
    assert tokenizer.convert_tokens_to_ids(["中", "not-a-token"]) == [ids[0], tokenizer.unk_token_id]
    assert tokenizer.convert_tokens_to_ids("[MASK]") == tokenizer.mask_token_id == 103
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == \
        (0, 100, 101, 102)
    assert tokenizer.vocab_size == len(tokenizer) == 21128
    pair = tokenizer.build_inputs_with_special_tokens([7, 8], [9])
    assert pair == [101, 7, 8, 102, 9, 102]
    assert tokenizer.create_token_type_ids([7, 8], [9]) == [0, 0, 0, 0, 1, 1]


def test_encode_words_ids_equal_encode(tokenizer, real_lines):
    from nezha_cli.text.segmenter import shared_segmenter

    segmenter = shared_segmenter()
    lines = real_lines[:1500] + real_lines[-1500:] + _mixed_lines(real_lines, 300, seed=2) + EDGE_CASES
    sentences = [segmenter.cut(line) for line in lines]
    ids, word_ids, lengths = tokenizer.encode_words_batch(sentences)
    assert len(ids) == len(word_ids) == lengths.sum()
    position = 0
    for line, words, n in zip(lines, sentences, lengths):
        row_ids, row_words = ids[position : position + n].tolist(), word_ids[position : position + n].tolist()
        position += n
        assert row_ids == tokenizer.encode(line), line
        assert (row_ids, row_words) == tuple(tokenizer.encode_words(words))
        # Word ids start at 0 and go up by one from one word to the next.
        assert all(b - a in (0, 1) for a, b in zip([-1] + row_words, row_words)), (line, row_words)


def test_encode_words_groups_tokens_by_word(tokenizer):
    words = ["迈向", "充满希望", "的", "新世纪", "——", "iPhone", "6s", " ", "１", "９", "９", "８", "年"]
    ids, word_ids = tokenizer.encode_words(words)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    grouped: dict[int, list[str]] = {}
    for token, word in zip(tokens, word_ids):
        grouped.setdefault(word, []).append(token)
    assert list(grouped.values()) == [
        ["迈", "向"], ["充", "满", "希", "望"], ["的"], ["新", "世", "纪"], ["[UNK]", "[UNK]"],
        # "iPhone" | "6s" is one WordPiece word, and so is "１９９８": whole words for the mask as well.
        ["iphone6", "##s"], ["１", "##９", "##９", "##８"], ["年"],
    ]


def test_encode_words_with_text_that_normalization_changes(tokenizer):
    # Special tokens, control characters and decomposed accents take the exact (offset) path.
    for words in (["[MASK]", "是", "好"], ["中", "\x00", "文"], ["cafe\u0301", "很", "好"], ["İ", "stanbul"]):
        ids, word_ids = tokenizer.encode_words(words)
        assert ids == tokenizer.encode("".join(words))
        assert word_ids == sorted(word_ids) and word_ids[0] == 0


def test_tokenizer_accepts_a_vocab_object_and_small_vocabs(tmp_path):
    from nezha_cli.text.vocab import Vocab

    vocab = Vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "文", "ab", "##c"])
    tokenizer = BertTokenizer(vocab)
    assert tokenizer.tokenize("中文 ABC abd 字") == ["中", "文", "ab", "##c", "[UNK]", "[UNK]"]


def test_character_classes_are_cached_per_unicode_version(tmp_path, monkeypatch):
    from nezha_cli.text.tokenizer import _cached_class_ranges, _class_ranges

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    computed = _cached_class_ranges()
    assert len(list((tmp_path / "nezha-cli").glob("bert-char-classes-*.json"))) == 1
    assert _cached_class_ranges() == computed == _class_ranges()
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert _cached_class_ranges() == computed  # an unusable cache directory only costs the computation
