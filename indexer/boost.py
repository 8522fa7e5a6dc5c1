"""Relevance boosting (``boost_by``): bias the retrieved candidates toward metadata values.

Cloudflare's "Relevance boosting": after retrieval (up to 50 candidates) and before
reranking, each candidate's retrieval score gets an additive boost computed from up to 3
metadata fields (the built-in ``timestamp`` or a field of the instance's ``custom_metadata``
schema). Boosting only reorders the candidates; it never adds a chunk.

Where Cloudflare's page is silent, these are the choices (docs/search-quality.md, "Relevance
boosting"):

* Each entry gives every candidate a boost in [0, 1]: ``desc``/``asc`` min-max normalise the
  field's values over the candidates that have one (highest / lowest value → 1, the other end
  → 0; all equal → 1); ``exists`` is 1 when the chunk has the field, ``not_exists`` when it
  has not. A candidate without a (parseable) value gets 0 from ``asc``/``desc``: missing
  values rank as the worst value.
* Entries are summed with equal weight and the sum is multiplied by :data:`BOOST_WEIGHT`
  (0.1), so a candidate gains at most 0.1 per entry (0.3 with 3 entries).
* "Has the field" means the chunk's metadata holds a value for it: ``false`` is a value of a
  boolean field, an empty string is no value of a text field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from indexer.metafilter import iso_seconds

logger = logging.getLogger(__name__)

#: Boost per ``boost_by`` entry at its best (added to a retrieval score in [0, 1]).
BOOST_WEIGHT = 0.1
MAX_BOOSTS = 3
DIRECTIONS = ("asc", "desc", "exists", "not_exists")
ORDERED_TYPES = ("number", "datetime")
#: Cloudflare's default direction per field type when ``direction`` is omitted.
DEFAULT_DIRECTION = {"number": "asc", "datetime": "asc", "text": "exists", "boolean": "exists"}
TIMESTAMP = "timestamp"


class BoostError(ValueError):
    """A ``boost_by`` entry that does not fit the instance's metadata (the message names it)."""


@dataclass(frozen=True, slots=True)
class Boost:
    """One resolved ``boost_by`` entry: the metadata key as stored, its type and the direction."""

    field: str
    data_type: str
    direction: str


def resolve_boosts(entries: Iterable[Any], schema: Iterable[tuple[str, str]], *, where: str = "boost_by") -> tuple[Boost, ...]:
    """Check ``boost_by`` entries against the instance's metadata and fill in default directions.

    Args:
        entries: objects (or mappings) with ``field`` and optional ``direction``.
        schema: the instance's custom metadata as ``(field_name, data_type)`` pairs.
        where: the request path of the list, for error messages.

    Returns:
        The resolved boosts, in the given order.

    Raises:
        BoostError: an unknown field, ``asc``/``desc`` on a text or boolean field, a field named
            twice, or more than :data:`MAX_BOOSTS` entries.
    """
    types = {TIMESTAMP: (TIMESTAMP, "datetime")}
    for name, data_type in schema:
        types.setdefault(name.lower(), (name, data_type))
    entries = list(entries)
    if len(entries) > MAX_BOOSTS:
        raise BoostError(f"{where}: at most {MAX_BOOSTS} entries (got {len(entries)})")
    out: list[Boost] = []
    for i, entry in enumerate(entries):
        name = _get(entry, "field")
        direction = _get(entry, "direction")
        known = types.get(str(name or "").strip().lower())
        if known is None:
            fields = ", ".join(sorted(types))
            raise BoostError(f"{where}[{i}].field: {name!r} is not 'timestamp' or a custom_metadata field (known: {fields})")
        key, data_type = known
        if any(b.field == key for b in out):
            raise BoostError(f"{where}[{i}].field: {key!r} is boosted twice; each entry needs its own field")
        if direction is None:
            direction = DEFAULT_DIRECTION[data_type]
        if direction not in DIRECTIONS:
            raise BoostError(f"{where}[{i}].direction: must be one of {', '.join(DIRECTIONS)}")
        if direction in ("asc", "desc") and data_type not in ORDERED_TYPES:
            raise BoostError(
                f"{where}[{i}].direction: {direction!r} needs a number or datetime field; {key!r} is {data_type} "
                "(use exists or not_exists)"
            )
        out.append(Boost(key, data_type, direction))
    return tuple(out)


def _get(entry: Any, name: str) -> Any:
    return entry.get(name) if isinstance(entry, Mapping) else getattr(entry, name, None)


def boost_scores(metadatas: Sequence[Mapping[str, Any]], boosts: Sequence[Boost]) -> list[float]:
    """The additive boost of each candidate, ``BOOST_WEIGHT`` × the sum of its per-entry boosts in [0, 1].

    Args:
        metadatas: the candidates' chunk metadata, in candidate order.
        boosts: resolved ``boost_by`` entries.

    Returns:
        One boost per candidate, each in [0, ``BOOST_WEIGHT`` × ``len(boosts)``].
    """
    total = [0.0] * len(metadatas)
    for boost in boosts:
        for i, b in enumerate(entry_scores(metadatas, boost)):
            total[i] += b
    return [BOOST_WEIGHT * t for t in total]


def entry_scores(metadatas: Sequence[Mapping[str, Any]], boost: Boost) -> list[float]:
    """One entry's boost in [0, 1] for each candidate (see the module docstring)."""
    if boost.direction in ("exists", "not_exists"):
        want = boost.direction == "exists"
        return [1.0 if has_value(m.get(boost.field)) == want else 0.0 for m in metadatas]
    values = [ordered_value(m.get(boost.field), boost.data_type) for m in metadatas]
    present = [v for v in values if v is not None]
    if not present:
        return [0.0] * len(values)
    lo, hi = min(present), max(present)
    span = hi - lo
    out = []
    for v in values:
        if v is None:
            out.append(0.0)
        elif span == 0:
            out.append(1.0)
        else:
            out.append((v - lo) / span if boost.direction == "desc" else (hi - v) / span)
    return out


def has_value(value: Any) -> bool:
    """Whether a metadata value counts as present (None and blank strings do not)."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return True


def ordered_value(value: Any, data_type: str) -> float | None:
    """A number or datetime metadata value as a float (datetimes: epoch seconds; None when unusable).

    Numbers stored as numbers or numeric strings; datetimes as epoch numbers (the built-in
    ``timestamp`` is epoch milliseconds) or ISO 8601 strings (UTC when no offset is given).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            f = float(text)
        except ValueError:
            seconds = iso_seconds(text) if data_type == "datetime" else None
            if seconds is None:
                return None
            f = seconds
    else:
        return None
    return f if math.isfinite(f) else None
