"""Pretraining, the whole stage: preparing data (:mod:`.prepare`: raw text -> `nezha tokenize` -> `nezha mask`,
cached), instances with NSP (:mod:`.instances`), whole word masking (:mod:`.masking`), the batch collator
(:mod:`.collator`), prepared data on disk (:mod:`.data`), recipes (:mod:`.recipes`) and the run itself
(:mod:`.run`: `nezha pretrain` on the shared engine)."""
