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
system prompt, tenant folder, ...), in SQLite under the data directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL,
    signature TEXT NOT NULL,   -- hash of the request options the answer depends on
    prompt TEXT NOT NULL,
    shingles TEXT NOT NULL,    -- JSON list
    items TEXT NOT NULL,       -- JSON {item_id: content_hash} of the cited chunks' items
    response TEXT NOT NULL,    -- JSON result
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT NOT NULL,
    entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS buckets_key ON buckets(key);
CREATE INDEX IF NOT EXISTS buckets_entry ON buckets(entry_id);
"""


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
    """Per-instance answer cache in ``<data_dir>/simcache.sqlite``.

    Args:
        path: the SQLite file.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock

    def close(self) -> None:
        self._conn.close()

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
        with self._lock:
            marks = ",".join("?" * len(keys))
            rows = self._conn.execute(
                f"SELECT DISTINCT e.id, e.prompt, e.shingles, e.items, e.response, e.created_at FROM buckets b"
                f" JOIN entries e ON e.id = b.entry_id WHERE b.key IN ({marks})",
                keys,
            ).fetchall()
            best: tuple[float, int, str, str, str] | None = None
            stale: list[int] = []
            for eid, eprompt, eshingles, eitems, eresponse, created in rows:
                if now - created > TTL_SECONDS:
                    stale.append(eid)
                    continue
                sim = jaccard(sh, set(json.loads(eshingles)))
                if sim >= need and (best is None or sim > best[0]):
                    best = (sim, eid, eprompt, eitems, eresponse)
            if best is not None:
                items = json.loads(best[3])
                if any(current(item) != h for item, h in items.items()):
                    stale.append(best[1])
                    best = None
            if stale:
                self._conn.executemany("DELETE FROM entries WHERE id=?", [(i,) for i in stale])
        if best is None:
            return None
        return CacheHit(json.loads(best[4]), best[2], best[0])

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
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(
                    "INSERT INTO entries(instance_id, signature, prompt, shingles, items, response, created_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (instance_id, signature, prompt, json.dumps(sorted(sh)), json.dumps(dict(items)),
                     json.dumps(dict(response)), self._clock()),
                )
                self._conn.executemany("INSERT INTO buckets(key, entry_id) VALUES (?,?)",
                                       [(k, cur.lastrowid) for k in set(keys)])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def drop_instance(self, instance_id: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM entries WHERE instance_id=?", (instance_id,))

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM entries").fetchone()[0])


def _bucket_keys(instance_id: str, signature: str, sig: np.ndarray) -> list[str]:
    """One LSH band per signature row (r = 1): any shared MinHash value makes a candidate.

    With 128 bands a pair at Jaccard 0.04 (the loosest threshold) shares a bucket with
    probability 1 - 0.96^128 ≈ 0.995; candidates are then checked exactly.
    """
    return [f"{instance_id}|{signature}|{i}|{int(v)}" for i, v in enumerate(sig)]
