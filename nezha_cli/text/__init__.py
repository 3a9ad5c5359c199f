"""Text: the BERT WordPiece tokenizer and its vocab, jieba segmentation, corpus readers, and `nezha tokenize`.

Imports are kept light here; the modules:

- :mod:`~nezha_cli.text.vocab`: ``Vocab``, ``load_vocab``, ``bert_chinese_vocab_path``, ``vocab_sha256``,
  ``build_vocab``;
- :mod:`~nezha_cli.text.tokenizer`: ``BertTokenizer`` (``tokenize``, ``encode``, ``encode_with_offsets``,
  ``encode_words``), ``BasicTokenizer``;
- :mod:`~nezha_cli.text.segmenter`: ``JiebaSegmenter``;
- :mod:`~nezha_cli.text.corpora`: ``CorpusReader``, ``default_corpus_documents``, ``write_default_corpus``;
- :mod:`~nezha_cli.text.pipeline`: ``tokenize_corpus`` (what `nezha tokenize` runs).
"""
