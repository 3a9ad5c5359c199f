"""`nezha mask`: pretraining instances (sentence pairs with NSP) from a `nezha tokenize` output, as BERT's
``create_pretraining_data`` makes them, masked statically or left for the collator to mask each epoch.

Instances are built per *block*: consecutive whole documents of about 256k tokens (a longer document is cut at a
sentence), never crossing a stripe of 4,096 documents (:mod:`nezha_cli.text.shards`). The "random next segment" of
NSP comes from another document of the same block, which for a block of thousands of documents is as random as
BERT's choice over the whole corpus, and lets the corpus stream through in constant memory. Each block has its own
random generator seeded with ``(seed, stripe, block number in the stripe)``, and blocks are written in corpus
order, so the output depends on the seed and the data only, not on ``num_proc``, and a shard (``shard=(I, N)``, or
a `nezha tokenize` shard) holds exactly the unsharded output's instances of its stripes. Within a block documents
are visited ``dupe_factor`` times and the instances are shuffled (BERT shuffles the whole corpus; the pretraining
loader shuffles again).

Output (a ``datasets.load_from_disk`` directory), one row per instance:

- static: ``input_ids`` (with [CLS]/[SEP], masked), ``token_type_ids``, ``word_ids`` (per position, -1 for special
  tokens, renumbered from 0 in each instance), ``masked_lm_positions`` and ``masked_lm_ids`` (sorted by position),
  ``next_sentence_label`` (0: B follows A, 1: B is random, as BERT);
- dynamic (``dynamic=True``): the same without masking and without the two ``masked_lm_*`` columns, plus
  ``instance_id`` (``stripe * 2**32`` + the row number within the stripe; the row number for a corpus of one
  stripe), from which :class:`~nezha_cli.pretraining.collator.PretrainingCollator`
  seeds each instance's mask;
- ``vocab.txt`` and ``manifest.json`` (``"kind": "nezha-masked"``, ``"dynamic"``, ``vocab_sha256``, options and
  statistics: instances, tokens, mean length, masked fraction, words masked, 80/10/10 split; for sharding:
  ``shard``, ``corpus``, ``stripe_documents`` and ``stripes``, the rows of each stripe in order).
"""

from __future__ import annotations

import bisect
import logging
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nezha_cli import __version__
from nezha_cli.errors import ConfigError, DataError
from nezha_cli.io import atomic_output_dir, check_output_path, read_json, write_json
from nezha_cli.pretraining.masking import MaskingConfig, instance_keys, mask_instances
from nezha_cli.text.dataset_files import DatasetWriter, data_files, iter_batches, list_array
from nezha_cli.text.parallel import ordered_map, resolve_num_proc
from nezha_cli.text.pipeline import MANIFEST_NAME, TOKENIZED_KIND
from nezha_cli.text.shards import WHOLE, Shard, as_shard
from nezha_cli.text.vocab import VOCAB_NAME, SpecialIds, Vocab, checked_vocab_sha256

logger = logging.getLogger(__name__)

MASKED_KIND = "nezha-masked"
BLOCK_TOKENS = 1 << 18
# instance_id and static mask keys: stripe * STRIPE_IDS + the instance's number within its stripe (or block).
STRIPE_IDS = 1 << 32
STAT_KEYS = ("instances", "tokens", "random_next", "masked", "random", "unchanged", "words_masked", "partial_words",
             "input_tokens", "overlong_tokens")
# Above this share of the input's tokens in lines that no instance can hold, `nezha mask` warns.
OVERLONG_WARNING = 0.2


@dataclass(frozen=True)
class InstanceConfig:
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    seed: int = 12345
    dynamic: bool = False

    def __post_init__(self) -> None:
        if self.max_seq_length < 5:
            raise ConfigError(f"--max-seq-length {self.max_seq_length}: needs room for [CLS] A [SEP] B [SEP], "
                              "at least 5")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ConfigError(f"--short-seq-prob {self.short_seq_prob}: must be between 0 and 1")
        if self.dupe_factor < 1:
            raise ConfigError(f"--dupe-factor {self.dupe_factor}: must be at least 1")


# A document is given by the token offsets of its segments (sentences) in the block: segment i is the tokens
# bounds[i]:bounds[i + 1]. Its segments are consecutive there, so A and B are each one range of the block's tokens:
# an instance is (A start, A end, B start, B end, is_random_next), and tokens are gathered once, for all instances.
Instance = tuple[int, int, int, int, bool]


def create_instances_from_document(
    documents: list[list[int]],
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
) -> list[Instance]:
    """BERT's ``create_instances_from_document``, on segment offsets (see above)."""
    bounds = documents[document_index]
    segments = len(bounds) - 1
    max_num_tokens = max_seq_length - 3
    random_ = rng.random
    # Usually fill the whole sequence; sometimes (short_seq_prob) a shorter one, to lessen the mismatch with short
    # fine-tuning inputs. (a + int(random() * (b - a + 1)) is rng.randint(a, b) without its checks: a hot loop.)
    target_seq_length = max_num_tokens
    if random_() < short_seq_prob:
        target_seq_length = 2 + int(random_() * (max_num_tokens - 1))
    instances: list[Instance] = []
    chunk_start = 0  # the current chunk is segments chunk_start..i
    i = 0
    while i < segments:
        if i == segments - 1 or bounds[i + 1] - bounds[chunk_start] >= target_seq_length:
            chunk = i - chunk_start + 1
            a_end = chunk_start + (1 + int(random_() * (chunk - 1)) if chunk >= 2 else 1)
            a_start, a_stop = bounds[chunk_start], bounds[a_end]
            if chunk == 1 or random_() < 0.5:
                is_random_next = True
                random_index = document_index
                for _ in range(10):
                    random_index = int(random_() * len(documents))
                    if random_index != document_index:
                        break
                other = documents[random_index]
                first = int(random_() * (len(other) - 1))
                # Segments from `first` on, until they hold target_seq_length - len(A) tokens (at least one).
                last = bisect.bisect_left(other, other[first] + target_seq_length - (a_stop - a_start), first + 1)
                b_start, b_stop = other[first], other[min(last, len(other) - 1)]
                # The segments not used for A go back to the document, so that they are not wasted.
                i = a_end - 1
            else:
                is_random_next = False
                b_start, b_stop = bounds[a_end], bounds[i + 1]
            instances.append((*truncate_seq_pair(a_start, a_stop, b_start, b_stop, max_num_tokens, rng),
                              is_random_next))
            chunk_start = i + 1
        i += 1
    return instances


def truncate_seq_pair(a_start: int, a_stop: int, b_start: int, b_stop: int, max_num_tokens: int,
                      rng: random.Random) -> tuple[int, int, int, int]:
    """BERT's truncate_seq_pair on two token ranges: trim the longer one token at a time (B on a tie), from the
    front or the back at random (truncating only the back would bias the model).

    Which segment loses how many tokens follows from the lengths alone; the front/back coin flips of each segment
    add up to a Binomial(removed, 1/2) count, drawn at once.
    """
    length_a, length_b = a_stop - a_start, b_stop - b_start
    excess = length_a + length_b - max_num_tokens
    if excess <= 0:
        return a_start, a_stop, b_start, b_stop
    gap = min(abs(length_a - length_b), excess)
    rest = excess - gap
    cut_a = (gap if length_a > length_b else 0) + rest // 2
    cut_b = (gap if length_b >= length_a else 0) + rest - rest // 2
    front_a, front_b = _coin_flips(rng, cut_a), _coin_flips(rng, cut_b)
    return a_start + front_a, a_stop - (cut_a - front_a), b_start + front_b, b_stop - (cut_b - front_b)


def _coin_flips(rng: random.Random, n: int) -> int:
    """Heads among n fair coin flips."""
    return bin(rng.getrandbits(n)).count("1") if n else 0


@dataclass
class Block:
    """Consecutive documents sent to one worker: the rows' doc ids, tokens and word ids, flat, plus row lengths."""

    index: int
    doc_ids: np.ndarray
    ids: np.ndarray
    word_ids: np.ndarray | None
    lengths: np.ndarray
    stripe: int = 0  # index is the block's number within its stripe


def _document_word_ids(block: Block) -> np.ndarray:
    """The block's word ids made unique within each document (each row numbers its words from 0)."""
    if block.word_ids is None:
        return np.arange(len(block.ids), dtype=np.int64)  # every token its own word
    word_ids = block.word_ids.astype(np.int64)
    ends = np.cumsum(block.lengths)
    row_words = np.zeros(len(block.lengths), np.int64)
    nonempty = block.lengths > 0
    row_words[nonempty] = word_ids[ends[nonempty] - 1] + 1
    new_doc = np.r_[True, block.doc_ids[1:] != block.doc_ids[:-1]]
    before = np.cumsum(row_words) - row_words
    doc_start = np.maximum.accumulate(np.where(new_doc, np.arange(len(row_words)), 0))
    return word_ids + np.repeat(before - before[doc_start], block.lengths)


def _documents(block: Block) -> list[list[int]]:
    """The block's documents as the token offsets of their segments (rows without tokens are left out)."""
    lengths = block.lengths
    ends = np.cumsum(lengths)
    kept = np.flatnonzero(lengths > 0)
    if not kept.size:
        return []
    doc_ids = block.doc_ids[kept]
    first = np.flatnonzero(np.r_[True, doc_ids[1:] != doc_ids[:-1]])
    starts = (ends - lengths)[kept].tolist()
    stops = ends[kept].tolist()
    edges = first.tolist() + [len(kept)]
    return [starts[a:b] + [stops[b - 1]] for a, b in zip(edges, edges[1:])]


@dataclass(frozen=True)
class _Task:
    instances: InstanceConfig
    masking: MaskingConfig
    special: SpecialIds
    has_word_ids: bool


_TASK: _Task | None = None


def _init_worker(task: _Task) -> None:
    global _TASK
    _TASK = task


def _block_seed(seed: int, index: int, stripe: int = 0) -> str:
    # String seeds go through SHA-512 in random.seed: independent streams for every (seed, stripe, block). Stripe 0
    # keeps the seeds of the versions before stripes (a corpus of one stripe gives the same output).
    return f"nezha-mask:{seed}:{index}" if stripe == 0 else f"nezha-mask:{seed}:{stripe}:{index}"


def build_block(block: Block, task: _Task | None = None) -> dict[str, Any]:
    """Instances of one block, as flat arrays and row lengths, plus statistics."""
    task = task or _TASK
    config, special = task.instances, task.special
    rng = random.Random(_block_seed(config.seed, block.index, block.stripe))
    documents = _documents(block)
    rng.shuffle(documents)
    raw: list[Instance] = []
    for _ in range(config.dupe_factor):
        for index in range(len(documents)):
            raw.extend(create_instances_from_document(documents, index, config.max_seq_length,
                                                      config.short_seq_prob, rng))
    rng.shuffle(raw)
    # Gather all instances at once: [CLS] and [SEP] are two extra "tokens" after the block's own, and each instance
    # is five ranges: [CLS], A, [SEP], B, [SEP].
    n = len(block.ids)
    ids = np.concatenate([block.ids.astype(np.int32), np.asarray([special.cls, special.sep], np.int32)])
    words = np.concatenate([_document_word_ids(block), np.asarray([-1, -1], np.int64)])
    ranges = np.asarray([r[:4] for r in raw], np.int64).reshape(-1, 4)
    piece_starts = np.stack([np.full(len(raw), n), ranges[:, 0], np.full(len(raw), n + 1), ranges[:, 2],
                             np.full(len(raw), n + 1)], axis=1).ravel()
    piece_lengths = np.stack([np.ones(len(raw), np.int64), ranges[:, 1] - ranges[:, 0], np.ones(len(raw), np.int64),
                              ranges[:, 3] - ranges[:, 2], np.ones(len(raw), np.int64)], axis=1).ravel()
    total = int(piece_lengths.sum())
    gather = np.repeat(piece_starts - (np.cumsum(piece_lengths) - piece_lengths), piece_lengths) + np.arange(total)
    lengths = piece_lengths.reshape(-1, 5).sum(axis=1)
    token_type_ids = np.repeat(np.tile(np.asarray([0, 0, 0, 1, 1], np.int8), len(raw)), piece_lengths)
    labels = np.fromiter((r[4] for r in raw), np.int8, len(raw))
    result = {
        "input_ids": ids[gather],
        "token_type_ids": token_type_ids,
        "word_ids": _renumber_words(words[gather], lengths),
        "next_sentence_label": labels,
        "lengths": lengths,
    }
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats.update(instances=len(raw), tokens=total, random_next=int(labels.sum()),
                 # A line is a segment: what it holds past max_seq_length - 3 tokens is cut off, as in BERT.
                 input_tokens=int(block.lengths.sum()),
                 overlong_tokens=int(np.maximum(block.lengths - (config.max_seq_length - 3), 0).sum()))
    if not config.dynamic:
        _mask_block(result, task, block, stats)
    result["stats"] = stats
    return result


def _mask_block(result: dict[str, Any], task: _Task, block: Block, stats: dict[str, int]) -> None:
    """Static masks for all instances of a block, instance i drawing from the key (seed, block, stripe, i)."""
    lengths = result["lengths"]
    keys = instance_keys(task.instances.seed, block.index, block.stripe * STRIPE_IDS + np.arange(len(lengths)))
    masked = mask_instances(result["input_ids"], result["word_ids"] if task.has_word_ids else None, lengths, keys,
                            task.special, task.masking)
    result["input_ids"] = masked.input_ids
    result["masked_lm_positions"] = masked.positions.astype(np.int32)
    result["masked_lm_ids"] = masked.labels.astype(np.int32)
    result["predictions"] = masked.predictions
    stats.update(masked.counts)
    stats["partial_words"] = count_partial_words(result["word_ids"], lengths, masked.positions, masked.predictions)


def _renumber_words(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Word ids from 0 in each instance, in order of appearance; -1 for the special tokens."""
    if len(words) == 0:
        return words.astype(np.int32)
    special = words == -1
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    change = np.r_[True, words[1:] != words[:-1]] & ~special
    change[starts] |= ~special[starts]
    running = np.cumsum(change)
    before = running[starts] - change[starts]
    renumbered = running - 1 - np.repeat(before, lengths)
    renumbered[special] = -1
    return renumbered.astype(np.int32)


def count_partial_words(word_ids: np.ndarray, lengths: np.ndarray, positions: np.ndarray,
                        predictions: np.ndarray) -> int:
    """Masked words (runs of a word id in an instance) with some of their positions left unmasked."""
    if len(word_ids) == 0:
        return 0
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    regular = word_ids >= 0
    run = np.cumsum(regular & (np.r_[True, word_ids[1:] != word_ids[:-1]] | np.isin(np.arange(len(word_ids)),
                                                                                     starts)))
    masked = np.zeros(len(word_ids), bool)
    masked[np.repeat(starts, predictions) + positions] = True
    size = int(run[-1]) + 1
    run_tokens = np.bincount(run[regular], minlength=size)
    run_masked = np.bincount(run[regular & masked], minlength=size)
    return int(np.count_nonzero((run_masked > 0) & (run_masked < run_tokens)))


def _blocks(data_dir: Path, has_word_ids: bool, block_tokens: int = BLOCK_TOKENS, stripe_documents: int | None = None,
            shard: Shard = WHOLE) -> Iterator[tuple[Block, int]]:
    """Blocks of whole documents of about ``block_tokens`` tokens (a document longer than 4 blocks is cut) that
    never cross a stripe of ``stripe_documents`` documents (None: one stripe); only the stripes of ``shard``."""
    columns = ["doc_id", "input_ids"] + (["word_ids"] if has_word_ids else [])
    pending: list[pa.RecordBatch] = []
    pending_tokens = 0
    stripe, index = -1, 0  # the stripe of the last block and the number of the next block in it

    def stripes(doc_ids: np.ndarray) -> np.ndarray:
        return doc_ids // stripe_documents if stripe_documents else np.zeros_like(doc_ids)

    def block(table: pa.Table) -> Block:
        nonlocal stripe, index
        first = int(stripes(table.column("doc_id").to_numpy()[:1])[0])
        if first != stripe:
            stripe, index = first, 0
        index += 1
        return _block(index - 1, table, has_word_ids, stripe)

    for batch in iter_batches(data_dir, columns):
        if shard.count > 1:
            keep = shard.holds(stripes(batch.column("doc_id").to_numpy()))
            batch = batch if keep.all() else batch.filter(pa.array(keep))
        if not batch.num_rows:
            continue
        pending.append(batch)
        pending_tokens += len(batch.column("input_ids").flatten())
        doc_id = batch.column("doc_id")
        first_stripe = stripes(pending[0].column("doc_id").to_numpy()[:1])[0]
        while pending_tokens >= block_tokens or stripes(doc_id.to_numpy()[-1:])[0] != first_stripe:
            table = pa.Table.from_batches(pending)
            cut = _cut_row(table, block_tokens, stripes)
            if cut is None:
                break
            yield block(table.slice(0, cut)), cut
            rest = table.slice(cut).combine_chunks()
            pending = [b for b in rest.to_batches() if b.num_rows]
            if not pending:
                pending_tokens = 0
                break
            pending_tokens = sum(len(b.column("input_ids").flatten()) for b in pending)
            first_stripe = stripes(pending[0].column("doc_id").to_numpy()[:1])[0]
    if pending:
        table = pa.Table.from_batches(pending)
        if table.num_rows:
            yield block(table), table.num_rows


def _cut_row(table: pa.Table, block_tokens: int, stripes=None) -> int | None:
    """Where the block ends: the first document boundary after ``block_tokens`` tokens, or a row boundary at 4x
    that inside an overlong document, or the end of the first rows' stripe if that comes first (``stripes``: doc
    ids to stripes); None when the pending rows do not reach any of them yet."""
    doc_ids = table.column("doc_id").to_numpy()
    lengths = np.asarray(pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False))
    tokens = np.cumsum(lengths)
    cut = None
    past = np.flatnonzero(tokens >= block_tokens)
    if past.size:
        first = int(past[0]) + 1  # rows [0, first) hold at least block_tokens tokens
        boundaries = np.flatnonzero(doc_ids[1:] != doc_ids[:-1]) + 1
        after = boundaries[boundaries >= first]
        if after.size:
            cut = int(after[0])
        else:
            over = np.flatnonzero(tokens >= 4 * block_tokens)
            cut = int(over[0]) + 1 if over.size else None
    if stripes is not None:
        row_stripes = stripes(doc_ids)
        other = np.flatnonzero(row_stripes != row_stripes[0])
        if other.size and (cut is None or int(other[0]) < cut):
            cut = int(other[0])
    return cut


def _block(index: int, table: pa.Table, has_word_ids: bool, stripe: int = 0) -> Block:
    input_ids = table.column("input_ids").combine_chunks()
    # flatten(), not .values: the rows may be a slice of their arrays.
    word_ids = table.column("word_ids").combine_chunks().flatten().to_numpy() if has_word_ids else None
    return Block(
        index=index,
        doc_ids=table.column("doc_id").to_numpy(),
        ids=input_ids.flatten().to_numpy(),
        word_ids=word_ids,
        lengths=np.asarray(pc.list_value_length(input_ids).to_numpy(zero_copy_only=False), np.int64),
        stripe=stripe,
    )


def read_tokenized_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of a `nezha tokenize` output, after checking that ``data_dir`` is one."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"{data_dir}: DATA not found")
    hint = "DATA must be an output directory of `nezha tokenize`"
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory; {hint}")
    manifest_path = data_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DataError(f"{data_dir}: no {MANIFEST_NAME}; {hint}")
    manifest = read_json(manifest_path, what="manifest")
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind != TOKENIZED_KIND:
        extra = " (already a `nezha mask` output)" if kind == MASKED_KIND else ""
        raise DataError(f"{manifest_path}: kind is {kind!r}, not {TOKENIZED_KIND!r}{extra}; {hint}")
    checked_vocab_sha256(data_dir, manifest, "nezha tokenize")
    data_files(data_dir)  # state.json must be readable
    return manifest


def create_pretraining_data(
    data_dir: Path | str,
    output_dir: Path | str,
    max_seq_length: int = 128,
    short_seq_prob: float = 0.1,
    max_predictions_per_seq: int = 20,
    masked_lm_prob: float = 0.15,
    dupe_factor: int = 1,
    whole_word_mask: bool | None = None,
    dynamic: bool = False,
    seed: int = 12345,
    num_proc: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    block_tokens: int = BLOCK_TOKENS,
    shard: Shard | tuple[int, int] | str | None = None,
) -> Path:
    """Write pretraining instances of the `nezha tokenize` output ``data_dir`` to ``output_dir`` (see the module
    doc); returns ``output_dir``. ``whole_word_mask=None`` masks whole words when the data has word ids.
    ``shard=(I, N)`` (or ``"I/N"``, 0-based): only the instances of shard I of N (:mod:`nezha_cli.text.shards`);
    a ``data_dir`` tokenized as a shard is masked as that shard anyway."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    config = InstanceConfig(max_seq_length, short_seq_prob, dupe_factor, seed, dynamic)
    num_proc = resolve_num_proc(num_proc)
    manifest = read_tokenized_manifest(data_dir)
    shard = as_shard(shard)
    stripe_documents = manifest.get("stripe_documents")
    source_shard = Shard.from_json(manifest.get("shard"))
    if shard is not None and shard.count > 1 and not stripe_documents:
        raise ConfigError(f"--shard {shard}: {data_dir} was tokenized by nezha-cli {manifest.get('version')}, which "
                          "did not number documents in stripes; run `nezha tokenize` again to shard it")
    out_shard = source_shard if shard is None else shard.within(source_shard)
    if out_shard is None:
        raise ConfigError(f"--shard {shard}: {data_dir} holds shard {source_shard} of its corpus, none of whose "
                          f"documents are in shard {shard}; mask it without --shard")
    has_word_ids = "word_ids" in manifest.get("columns", [])
    if whole_word_mask is None:
        whole_word_mask = has_word_ids
    elif whole_word_mask and not has_word_ids:
        raise ConfigError(f"{data_dir}: whole word masking needs word ids, but the data was tokenized with --no-wwm; "
                          "re-run `nezha tokenize` without it, or pass --no-whole-word-mask")
    masking = MaskingConfig(masked_lm_prob, max_predictions_per_seq, whole_word_mask)
    vocab = Vocab.from_file(data_dir / VOCAB_NAME)
    check_output_path(output_dir, overwrite, inputs=[data_dir])
    task = _Task(config, masking, vocab.special_ids, has_word_ids and whole_word_mask)

    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        shutil.copyfile(data_dir / VOCAB_NAME, tmp / VOCAB_NAME)
        stats, stripes = _write_instances(data_dir, tmp, task, has_word_ids, num_proc, show_progress, block_tokens,
                                          None if shard else manifest.get("counts", {}).get("tokens"),
                                          stripe_documents, shard or WHOLE)
        if stats["instances"] == 0 and shard is not None and shard.count > 1:
            raise DataError(f"--shard {shard}: no documents of {data_dir} are in this shard: shards take stripes of "
                            f"{stripe_documents:,} documents in turn, so use fewer shards")
        if stats["instances"] == 0:
            raise DataError(f"{data_dir}: no instances: the tokenized data has no tokens")
        if stats["overlong_tokens"] > OVERLONG_WARNING * stats["input_tokens"]:
            logger.warning("%s: %.0f%% of the tokens are in lines longer than max_seq_length - 3 = %d tokens, past "
                           "which an instance cuts them off; split the text into sentences (BERT's layout: one "
                           "sentence per line, a blank line between documents) or raise --max-seq-length", data_dir,
                           100 * stats["overlong_tokens"] / stats["input_tokens"], config.max_seq_length - 3)
        out_manifest = {
            "kind": MASKED_KIND,
            "dynamic": dynamic,
            "version": __version__,
            "source": str(data_dir),
            "inputs": manifest.get("inputs"),
            "vocab_sha256": manifest["vocab_sha256"],  # checked against the copied file's bytes above
            "vocab_size": vocab.vocab_size,
            "options": {**asdict(config), **asdict(masking)},
            "columns": _columns(dynamic),
            "instances": stats["instances"],
            "statistics": _statistics(stats, dynamic),
            "stripe_documents": stripe_documents,
            "shard": out_shard.to_json(),
            "corpus": manifest.get("corpus"),
            "stripes": stripes,
        }
        write_json(tmp / MANIFEST_NAME, out_manifest)
    logger.info("wrote %s %s instances to %s", f"{stats['instances']:,}", "unmasked" if dynamic else "masked",
                output_dir)
    return output_dir


def _columns(dynamic: bool) -> dict[str, str]:
    columns = {"input_ids": "list[int32]", "token_type_ids": "list[int8]", "word_ids": "list[int32]"}
    if not dynamic:
        columns.update(masked_lm_positions="list[int32]", masked_lm_ids="list[int32]")
    columns["next_sentence_label"] = "int8"
    if dynamic:
        columns["instance_id"] = "int64"
    return columns


def _write_instances(data_dir: Path, out: Path, task: _Task, has_word_ids: bool, num_proc: int,
                     show_progress: bool, block_tokens: int, total_tokens: int | None,
                     stripe_documents: int | None = None,
                     shard: Shard = WHOLE) -> tuple[dict[str, int], list[list[int]]]:
    """Statistics, and [stripe, rows] for each stripe written, in order."""
    from nezha_cli.console import make_progress

    dynamic = task.instances.dynamic
    writer = DatasetWriter(out, _columns(dynamic))
    stats = dict.fromkeys(STAT_KEYS, 0)
    stripes: list[list[int]] = []
    with make_progress("tokens", disable=not show_progress) as progress:
        job = progress.add_task("mask" if not dynamic else "instances", total=total_tokens)
        blocks = ((block, (int(block.lengths.sum()), block.stripe))
                  for block, _ in _blocks(data_dir, has_word_ids, block_tokens, stripe_documents, shard))
        for result, (block_size, stripe) in ordered_map(build_block, blocks, num_proc, _init_worker, (task,)):
            lengths = result["lengths"]
            if not stripes or stripes[-1][0] != stripe:
                stripes.append([stripe, 0])
            in_stripe = stripes[-1][1]
            stripes[-1][1] += len(lengths)
            batch = {
                "input_ids": list_array(result["input_ids"], lengths, pa.int32()),
                "token_type_ids": list_array(result["token_type_ids"], lengths, pa.int8()),
                "word_ids": list_array(result["word_ids"], lengths, pa.int32()),
                "next_sentence_label": pa.array(result["next_sentence_label"], pa.int8()),
            }
            if dynamic:
                # Unique in the corpus and the same in a shard as without sharding (a stripe holds far fewer
                # than STRIPE_IDS instances).
                first = stripe * STRIPE_IDS + in_stripe
                batch["instance_id"] = pa.array(np.arange(first, first + len(lengths)), pa.int64())
            else:
                batch["masked_lm_positions"] = list_array(result["masked_lm_positions"], result["predictions"],
                                                          pa.int32())
                batch["masked_lm_ids"] = list_array(result["masked_lm_ids"], result["predictions"], pa.int32())
            writer.write(batch)
            for key in STAT_KEYS:
                stats[key] += result["stats"][key]
            progress.update(job, advance=block_size)
    if stats["instances"]:
        writer.close()
    else:
        writer.abort()
    return stats, stripes


def _statistics(stats: dict[str, int], dynamic: bool) -> dict[str, Any]:
    n, tokens = stats["instances"], stats["tokens"]
    out: dict[str, Any] = {
        "instances": n,
        "tokens": tokens,
        "mean_length": round(tokens / n, 2) if n else 0.0,
        "next_sentence_random_fraction": round(stats["random_next"] / n, 4) if n else 0.0,
    }
    if not dynamic:
        masked = stats["masked"] + stats["random"] + stats["unchanged"]
        out.update({
            "masked_tokens": masked,
            "masked_fraction": round(masked / tokens, 4) if tokens else 0.0,
            "words_masked": stats["words_masked"],
            "partial_words": stats["partial_words"],
            "mask_token_fraction": round(stats["masked"] / masked, 4) if masked else 0.0,
            "random_token_fraction": round(stats["random"] / masked, 4) if masked else 0.0,
            "unchanged_fraction": round(stats["unchanged"] / masked, 4) if masked else 0.0,
        })
    return out
