"""Sharded data preparation: N machines each `nezha tokenize` and `nezha mask` a disjoint part of one corpus, and
the parts together are exactly the instances one machine would have made.

`nezha mask` builds instances per block of consecutive documents (the random next segment of NSP comes from the
same block, and each block draws from its own generator), so a part can only be prepared alone if no block crosses
into another part. The unit is therefore fixed by the corpus, never by N: documents are numbered from 0 in input
order, and *stripe* k holds documents ``k * S`` to ``(k + 1) * S - 1`` (``S = STRIPE_DOCUMENTS``). A block never
crosses a stripe boundary, also without sharding, and every random choice is keyed by (seed, stripe, block in the
stripe, instance in the block). Shard ``I/N`` (0-based, like torchrun's and SLURM's ranks: ``0/N`` .. ``N-1/N``)
holds the stripes k with ``k % N == I``; round robin spreads the work evenly without knowing the corpus size.

What holds: for the same inputs, vocab, options and seed, the instances of shards ``0/N`` .. ``N-1/N`` are those of
the unsharded preparation, masks and ``instance_id`` included; ``nezha pretrain`` given all the shards puts them
back in corpus order, so that the run equals one on the unsharded data. Each machine reads (but does not tokenize)
the whole input, which is cheap next to jieba; a stripe's tail block is shorter than the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nezha_cli.errors import ConfigError

STRIPE_DOCUMENTS = 4096
_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): the stripes k with ``k % count == index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"--shard {self}: the count must be at least 1 (INDEX/COUNT, e.g. 0/4)")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"--shard {self}: the index must be 0 to {self.count - 1} (0-based, like torchrun's "
                              f"ranks: 0/{self.count} .. {self.count - 1}/{self.count})")

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SHARD_RE.fullmatch(str(text))
        if match is None:
            raise ConfigError(f"--shard {text}: expected INDEX/COUNT, 0-based, such as 0/4 .. 3/4")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_json(cls, value: dict | None) -> Shard:
        return cls(int(value["index"]), int(value["count"])) if value else cls(0, 1)

    def holds(self, stripes: np.ndarray) -> np.ndarray:
        return np.asarray(stripes) % self.count == self.index

    def overlaps(self, other: Shard) -> bool:
        """Whether some stripe is in both (k = a mod m and k = b mod n have a solution: a = b mod gcd(m, n))."""
        return (self.index - other.index) % math.gcd(self.count, other.count) == 0

    def within(self, outer: Shard) -> Shard | None:
        """The stripes in both ``self`` and ``outer`` as one shard (mod the lcm of the counts); None if none."""
        if not self.overlaps(outer):
            return None
        lcm = math.lcm(self.count, outer.count)
        index = next(k for k in range(self.index, lcm, self.count) if k % outer.count == outer.index)
        return Shard(index, lcm)


WHOLE = Shard(0, 1)


def as_shard(value: Shard | tuple[int, int] | str | None) -> Shard | None:
    """A :class:`Shard` from a Shard, an ``(index, count)`` pair or ``"I/N"``; None stays None (no sharding)."""
    if value is None or isinstance(value, Shard):
        return value
    if isinstance(value, str):
        return Shard.parse(value)
    try:
        index, count = value
        return Shard(int(index), int(count))
    except (TypeError, ValueError):
        raise ConfigError(f"shard={value!r}: expected (index, count), 0-based, such as (0, 4)") from None


def corpus_fingerprint(names_and_sizes: Sequence[tuple[str, int | None]]) -> str | None:
    """What identifies "the same corpus" across machines: its inputs' names and sizes (None for stdin, which has
    neither)."""
    if any(size is None and name == "-" for name, size in names_and_sizes):
        return None
    blob = json.dumps([list(x) for x in names_and_sizes])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
