"""Similarity cache for ``/ai-search`` answers (seeds: "Similarity cache").

A prompt is normalised (lower case, ``what's`` → ``what is``) and split into word
shingles (single words and overlapping word pairs, e.g. "what is", "the weather").
Its MinHash signature (128 seeded hash functions over 64-bit shingle hashes) is
stored with one LSH bucket per signature value, so a lookup reads only entries
sharing a bucket with the new prompt; a candidate is reused when the Jaccard
similarity of the two shingle sets reaches the threshold:

============  ======================  ============  ===========================================
seeds' name   Cloudflare API name     Jaccard ≥     documented example pair (seeds)
============  ======================  ============  ===========================================
exact         ``super_strict_match``  0.90          "What is the weather like today?"
strong        ``close_enough``        0.35          "How's the weather today?" (default)
broad         ``flexible_friend``     0.15          "Tell me today's weather"
loose         ``anything_goes``       0.04          "Give me the forecast"
============  ======================  ============  ===========================================

(each against "What's the weather like today?"; a pair matches at its own threshold
and every looser one, not at the stricter ones).  Entries expire after 30 days.  An
entry records the content hash of every item whose chunks it cited; on lookup, an
entry whose items changed or were deleted is dropped, whichever process re-indexed
them.  Entries are kept per instance and per request signature (filters, model,
system prompt, tenant folder, ...) in the state database (tables ``simcache_entries``
and ``simcache_buckets``, through :class:`~indexer.state.StateStore`), so every API
process sharing the database shares the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from indexer.state import StateStore

logger = logging.getLogger(__name__)

#: Jaccard similarity needed to reuse an answer, by threshold name (both vocabularies accepted).
THRESHOLDS = {"exact": 0.90, "strong": 0.35, "broad": 0.15, "loose": 0.04}
API_NAMES = {"super_strict_match": "exact", "close_enough": "strong", "flexible_friend": "broad", "anything_goes": "loose"}
DEFAULT_THRESHOLD = "strong"
TTL_SECONDS = 30 * 24 * 3600  # 30 days
NUM_PERM = 128
_PRIME = (1 << 61) - 1
_rng = np.random.default_rng(20250924)
_A = _rng.integers(1, _PRIME, size=NUM_PERM, dtype=np.uint64)
_B = _rng.integers(0, _PRIME, size=NUM_PERM, dtype=np.uint64)
_WORD = re.compile(r"\w+")
def threshold_name(value: str | None) -> str:
    """The seeds' threshold name for either vocabulary (None → ``strong``).

    Raises:
        ValueError: an unknown name (message names ``cache_threshold``).
    """
    if value is None:
        return DEFAULT_THRESHOLD
    name = API_NAMES.get(value, value)
    if name not in THRESHOLDS:
        allowed = ", ".join([*THRESHOLDS, *API_NAMES])
        raise ValueError(f"cache_threshold: must be one of {allowed}, got {value!r}")
    return name


def shingles(prompt: str) -> set[str]:
    """Word shingles of a prompt: normalised words and overlapping word pairs."""
    text = prompt.lower().replace("\u2019", "'")
    text = re.sub(r"(\w)'s\b", r"\1 is", text)
    words = _WORD.findall(text)
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:], strict=False)}


def minhash(items: Iterable[str]) -> np.ndarray:
    """MinHash signature (``NUM_PERM`` values) of a set of strings."""
    hashes = np.array(
        [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % _PRIME for s in items],
        dtype=np.uint64,
    )
    if hashes.size == 0:
        return np.full(NUM_PERM, _PRIME, dtype=np.uint64)
    # (a*x + b) mod p without overflow: numpy uint64 wraps, so reduce with Python ints per permutation
    out = np.empty(NUM_PERM, dtype=np.uint64)
    xs = [int(h) for h in hashes]
    for i in range(NUM_PERM):
        a, b = int(_A[i]), int(_B[i])
        out[i] = min((a * x + b) % _PRIME for x in xs)
    return out


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A reused answer."""

    response: dict[str, Any]
    prompt: str
    similarity: float


class SimilarityCache:
    """Per-instance answer cache in the state database.

    Args:
        state: the state store (SQLite or PostgreSQL) holding the cache tables.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(self, state: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self._clock = clock

    @staticmethod
    def signature(options: Mapping[str, Any]) -> str:
        """A stable hash of the request options an answer depends on."""
        return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def lookup(
        self,
        instance_id: str,
        prompt: str,
        *,
        signature: str,
        threshold: str = DEFAULT_THRESHOLD,
        current: Callable[[str], str | None],
    ) -> CacheHit | None:
        """The most similar fresh entry at or above ``threshold``, or None.

        Args:
            instance_id: the instance.
            prompt: the new prompt.
            signature: :meth:`signature` of the request options.
            threshold: a threshold name (either vocabulary).
            current: item id → its current content hash (None when deleted); entries whose
                cited items changed are dropped.
        """
        need = THRESHOLDS[threshold_name(threshold)]
        sh = shingles(prompt)
        keys = _bucket_keys(instance_id, signature, minhash(sh))
        now = self._clock()
        best: tuple[float, dict[str, Any]] | None = None
        stale: list[int] = []
        for row in self.state.simcache_candidates(keys):
            if row["instance_id"] != instance_id or row["signature"] != signature:
                continue  # the bucket key holds both, but a "|" inside an id could alias another pair
            if now - row["created_at"] > TTL_SECONDS:
                stale.append(row["id"])
                continue
            sim = jaccard(sh, set(json.loads(row["shingles"])))
            if sim >= need and (best is None or sim > best[0]):
                best = (sim, row)
        if best is not None and any(current(item) != h for item, h in json.loads(best[1]["items"]).items()):
            stale.append(best[1]["id"])
            best = None
        if stale:
            self.state.simcache_delete(stale)
        if best is None:
            return None
        return CacheHit(json.loads(best[1]["response"]), best[1]["prompt"], best[0])

    def store(
        self,
        instance_id: str,
        prompt: str,
        response: Mapping[str, Any],
        *,
        signature: str,
        items: Mapping[str, str | None],
    ) -> None:
        """Cache an answer with the content hashes of the items it cited."""
        sh = shingles(prompt)
        keys = _bucket_keys(instance_id, signature, minhash(sh))
        entry = {
            "instance_id": instance_id,
            "signature": signature,
            "prompt": prompt,
            "shingles": json.dumps(sorted(sh)),
            "items": json.dumps(dict(items)),
            "response": json.dumps(dict(response)),
            "created_at": self._clock(),
        }
        self.state.simcache_add(entry, keys)

    def drop_instance(self, instance_id: str) -> None:
        """Forget every cached answer of an instance."""
        self.state.simcache_delete(instance_id=instance_id)

    def count(self) -> int:
        """Number of cached answers (all instances)."""
        return self.state.simcache_count()


def _bucket_keys(instance_id: str, signature: str, sig: np.ndarray) -> list[str]:
    """One LSH band per signature row (r = 1): any shared MinHash value makes a candidate.

    With 128 bands a pair at Jaccard 0.04 (the loosest threshold) shares a bucket with
    probability 1 - 0.96^128 ≈ 0.995; candidates are then checked exactly.
    """
    return [f"{instance_id}|{signature}|{i}|{int(v)}" for i, v in enumerate(sig)]
