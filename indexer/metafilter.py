"""Cloudflare metadata filters → Chroma ``where`` clauses.

Filter shape (seeds, "Metadata"): a comparison ``{"type": eq|ne|gt|gte|lt|lte,
"key", "value"}`` or one compound ``{"type": and|or, "filters": [comparisons]}``
(no nesting; ``or`` only with ``eq`` on a single key).  Keys: ``folder``,
``filename``, ``timestamp`` (ms, compared rounded down to seconds), ``context``,
and the instance's ``custom_metadata`` fields (names case-insensitive), whose
values are compared as their type: ``number`` as floats, ``datetime`` as epoch
milliseconds rounded down to seconds (a number of ms or an ISO 8601 string),
``boolean`` (``eq``/``ne`` only; ``true``/``false`` or the strings the indexer
accepts) and ``text`` (``eq``/``ne``; Chroma cannot compare strings and, unlike
folders, a custom field's distinct values are not kept, so a text range is a 400).

Chroma compares numbers but not strings, so a string range (the documented
folder "starts with" idiom ``gt "customer-a//"`` + ``lte "customer-a/z"``) is
evaluated here against the instance's distinct values of that key, read from the
state database, and sent to Chroma as an exact ``$in`` list.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
COMPOUNDS = ("and", "or")
STRING_KEYS = ("folder", "filename", "context")
NUMERIC_KEYS = ("timestamp",)
KEYS = STRING_KEYS + NUMERIC_KEYS
_NEVER = "\x00no-match\x00"
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}

DistinctValues = Callable[[str], Iterable[str]]
#: A custom field name as the schema spells it → its data type (``text|number|boolean|datetime``).
CustomFields = Mapping[str, str]


class FilterError(ValueError):
    """A filter the API cannot accept; the message names the field."""


def iso_seconds(text: str) -> float | None:
    """An ISO 8601 date or date-time as epoch seconds (UTC when it has no offset), or None."""
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def round_timestamp(value: Any, *, field: str = "filters.value") -> int:
    """Milliseconds rounded down to whole seconds (as the seeds specify)."""
    try:
        ms = int(float(value))
    except (TypeError, ValueError):
        raise FilterError(f"{field}: timestamp must be a number of milliseconds, got {value!r}") from None
    return ms - ms % 1000


def compile_filters(
    filters: Mapping[str, Any] | None,
    distinct: DistinctValues,
    *,
    folder_prefix: str | None = None,
    field: str = "filters",
    custom: CustomFields | None = None,
) -> dict[str, Any] | None:
    """Translate a Cloudflare filter (plus an optional tenant folder prefix) into a Chroma ``where``.

    Args:
        filters: the request's ``filters`` object, or None.
        distinct: returns the distinct stored values of a string key (for string ranges).
        folder_prefix: restrict to folders starting with this prefix (token multitenancy).
        field: the request field name, for error messages.
        custom: the instance's custom metadata fields (name → data type), filterable by name.

    Returns:
        A Chroma ``where`` dict, or None for "no restriction".

    Raises:
        FilterError: malformed or unsupported filter.
    """
    clauses: list[dict[str, Any]] = []
    if filters:
        if not isinstance(filters, Mapping):
            raise FilterError(f"{field}: must be an object")
        fields = {name.lower(): (name, dtype) for name, dtype in (custom or {}).items()}
        clauses.append(_compile_top(filters, distinct, field, fields))
    if folder_prefix:
        folders = [f for f in distinct("folder") if f.startswith(folder_prefix)]
        clauses.append({"folder": {"$in": folders or [_NEVER]}})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


_Fields = Mapping[str, tuple[str, str]]  # lowercased name → (name as the schema spells it, data type)


def _compile_top(f: Mapping[str, Any], distinct: DistinctValues, field: str, fields: _Fields) -> dict[str, Any]:
    ftype = f.get("type")
    if ftype in COMPOUNDS:
        subs = f.get("filters")
        if not isinstance(subs, list) or not subs:
            raise FilterError(f"{field}.filters: a compound filter needs a non-empty list of filters")
        compiled = []
        starts_with = _starts_with_idiom(subs) if ftype == "and" else None
        if starts_with is not None:
            prefix, used = starts_with
            folders = sorted(v for v in distinct("folder") if v is not None and v.startswith(prefix))
            compiled.append({"folder": {"$in": folders or [_NEVER]}})
        for i, sub in enumerate(subs):
            sub_field = f"{field}.filters[{i}]"
            if not isinstance(sub, Mapping):
                raise FilterError(f"{sub_field}: must be an object")
            if sub.get("type") in COMPOUNDS:
                raise FilterError(f"{sub_field}: compound filters cannot be nested")
            if ftype == "or" and sub.get("type") != "eq":
                raise FilterError(f"{sub_field}.type: 'or' filters only allow 'eq' comparisons")
            if starts_with is not None and i in starts_with[1]:
                continue
            compiled.append(_compile_comparison(sub, distinct, sub_field, fields))
        if ftype == "or":
            keys = {_folded(sub.get("key"), fields) for sub in subs}
            if len(keys) != 1:
                raise FilterError(f"{field}.filters: all 'or' conditions must use the same key")
        if len(compiled) == 1:
            return compiled[0]
        return {"$and" if ftype == "and" else "$or": compiled}
    return _compile_comparison(f, distinct, field, fields)


def _custom_field(key: Any, fields: _Fields) -> tuple[str, str] | None:
    """``(name as the schema spells it, data type)`` when ``key`` names a custom field, else None."""
    return fields.get(key.lower()) if isinstance(key, str) and key not in KEYS else None


def _folded(key: Any, fields: _Fields) -> Any:
    """A custom field's name as the schema spells it (built-in keys and unknown keys unchanged)."""
    custom = _custom_field(key, fields)
    return key if custom is None else custom[0]


def _compile_comparison(f: Mapping[str, Any], distinct: DistinctValues, field: str, fields: _Fields) -> dict[str, Any]:
    op = f.get("type")
    key = f.get("key")
    if op not in COMPARISONS:
        raise FilterError(f"{field}.type: must be one of {', '.join(COMPARISONS + COMPOUNDS)}, got {op!r}")
    custom = _custom_field(key, fields)
    if key not in KEYS and custom is None:
        known = ", ".join([*KEYS, *(name for name, _t in fields.values())])
        raise FilterError(f"{field}.key: must be one of {known}, got {key!r}")
    if "value" not in f:
        raise FilterError(f"{field}.value: field required")
    value = f["value"]
    if custom is not None:
        return _compile_custom(custom[0], custom[1], op, value, field)
    if key in NUMERIC_KEYS:
        return {key: {f"${op}": round_timestamp(value, field=f"{field}.value")}}
    if not isinstance(value, str):
        raise FilterError(f"{field}.value: must be a string for key {key!r}")
    if op in ("eq", "ne"):
        return {key: {f"${op}": value}}
    matches = sorted(v for v in distinct(key) if v is not None and _string_match(key, op, v, value))
    return {key: {"$in": matches or [_NEVER]}}


def _compile_custom(name: str, data_type: str, op: str, value: Any, field: str) -> dict[str, Any]:
    """A comparison on a custom field, its value cast the way the indexer stores that type."""
    from indexer.custom_metadata import coerce  # lxml-based module; filters without custom fields never need it

    if data_type in ("text", "boolean") and op not in ("eq", "ne"):
        raise FilterError(
            f"{field}.type: {data_type} field {name!r} supports eq and ne (or an 'or' of eq), not {op!r}"
        )
    typed: Any
    if data_type == "text":
        if not isinstance(value, str):
            raise FilterError(f"{field}.value: must be a string for text field {name!r}")
        typed = value
    elif isinstance(value, bool):
        typed = value if data_type == "boolean" else None
    elif isinstance(value, int | float):
        if data_type == "number":
            typed = float(value)
        elif data_type == "datetime":
            typed = round_timestamp(value, field=f"{field}.value")
        else:
            typed = None
    elif isinstance(value, str):
        typed = coerce(value, data_type)  # as the indexer reads a tag or header
    else:
        typed = None
    if typed is None or (isinstance(typed, float) and not math.isfinite(typed)):
        expected = {"number": "a number", "boolean": "true or false",
                    "datetime": "epoch milliseconds or an ISO 8601 date-time"}.get(data_type, "a value")
        raise FilterError(f"{field}.value: {data_type} field {name!r} needs {expected}, got {value!r}")
    return {name: {f"${op}": typed}}


def _starts_with_idiom(subs: list[Any]) -> tuple[str, tuple[int, int]] | None:
    """Find the documented folder "starts with" pair in an ``and``: ``gt "P//"`` with ``lte "P/z"``.

    Returns ``(P/, (index of gt, index of lte))``.  Read literally, the pair would
    also drop ``P/`` itself and sub-folders sorting after ``P/z`` (``P/zoo/``); the
    seeds define it as "all files and subfolders within a specific path", so it is
    compiled as exactly that.
    """
    gts = {
        i: s["value"][:-1]
        for i, s in enumerate(subs)
        if isinstance(s, Mapping) and s.get("type") == "gt" and s.get("key") == "folder"
        and isinstance(s.get("value"), str) and s["value"].endswith("//")
    }
    for j, s in enumerate(subs):
        if not (isinstance(s, Mapping) and s.get("type") == "lte" and s.get("key") == "folder"):
            continue
        for i, prefix in gts.items():
            if s.get("value") == prefix + "z":
                return prefix, (i, j)
    return None


def _string_match(key: str, op: str, stored: str, value: str) -> bool:
    """Compare a stored string with a filter value.

    The documented folder "starts with" idiom is ``gt "customer-a//"`` with ``lte
    "customer-a/z"``, and the seeds say it captures ``customer-a/profile.md``
    (folder ``customer-a/``) as well as the sub-folders.  A plain string comparison
    would drop ``customer-a/`` itself (it sorts before ``customer-a//``), so a
    folder ``gt`` whose value ends in ``//`` also accepts the folder it names.
    """
    if key == "folder" and op == "gt" and value.endswith("//") and stored == value[:-1]:
        return True
    return _OPS[op](stored, value)
