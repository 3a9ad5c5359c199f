"""Pretraining data: instances with NSP (:mod:`~nezha_cli.pretraining.instances`, what `nezha mask` runs), whole word
masking (:mod:`~nezha_cli.pretraining.masking`) and the batch collator (:mod:`~nezha_cli.pretraining.collator`)."""
