"""Custom metadata values: read from a page's ``<meta>`` tags or an upload's ``x-amz-meta-*`` headers.

An instance's ``custom_metadata`` schema (at most 10 ``{field_name, data_type}`` pairs) names the
fields to keep; nothing else is extracted.  Cloudflare's documented behaviour
("Website: Custom metadata" and "Indexing: Metadata"):

* Website pages: every ``<meta>`` in the ``<head>`` with a ``name`` or ``property`` attribute is
  matched against the schema, case-insensitively, and its ``content`` is cast to the field's type.
  Recognised fields also read Open Graph tags: ``title`` (``og:title``), ``description``
  (``og:description``), ``image`` (``og:image``); a standard tag wins over the Open Graph one.
* Uploads (R2's S3-style object metadata): header ``x-amz-meta-<field>``, names case-insensitive.
* Types: ``text`` (truncated to 500 characters), ``number`` (parsed as a float), ``boolean``
  (``true``/``1``/``yes`` or ``false``/``0``/``no``, any case), ``datetime`` (ISO 8601, such as
  ``2026-01-15T00:00:00Z``).  A value that does not parse as its type is left out (Cloudflare:
  "Any other value is treated as invalid and the field is omitted").

Where the pages are silent, these are the choices: values are stripped of surrounding whitespace
and an empty value counts as absent; the first tag naming a field is the one read; a number
must be a plain decimal (``2.5``, ``-3``, ``1e3``; not ``nan``, ``inf`` or ``2.5 px``); a datetime
without a UTC offset is UTC, and is stored like the built-in ``timestamp``: epoch milliseconds
rounded down to whole seconds, so range filters and ``boost_by`` compare numbers.  Values are
stored on every chunk under the field name as the schema spells it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from indexer.extract import HTML_TYPES, head_meta, mime_type
from indexer.instance import INDEX_KEYS, RESERVED_METADATA
from indexer.metafilter import iso_seconds

MAX_TEXT_CHARS = 500
#: Chunk metadata keys a custom field never overwrites (a field named ``title`` does replace the title).
INTERNAL_KEYS = frozenset({*RESERVED_METADATA, *INDEX_KEYS})
#: Chunk metadata keys that are not custom values (search results show them in their own places).
BUILTIN_KEYS = INTERNAL_KEYS | {"title"}
AMZ_META_PREFIX = "x-amz-meta-"
#: Open Graph fallbacks of the recognised fields (the standard ``<meta name=...>`` wins).
OPEN_GRAPH = {"title": "og:title", "description": "og:description", "image": "og:image"}
TRUE_VALUES = frozenset({"true", "1", "yes"})
FALSE_VALUES = frozenset({"false", "0", "no"})
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

Schema = list[tuple[str, str]]


def schema_of(custom_metadata: Iterable[Any] | None) -> Schema:
    """The instance's ``custom_metadata`` as ``(field_name, data_type)`` pairs.

    Args:
        custom_metadata: ``CustomMetadataField`` objects or their dicts (as stored), or None.

    Returns:
        The pairs in schema order; empty when there is no schema.
    """
    out: Schema = []
    for f in custom_metadata or ():
        name = f.get("field_name") if isinstance(f, Mapping) else getattr(f, "field_name", None)
        dtype = (f.get("data_type") if isinstance(f, Mapping) else getattr(f, "data_type", None)) or "text"
        if name:
            out.append((str(name), str(dtype)))
    return out


def coerce(value: str | None, data_type: str) -> str | float | bool | int | None:
    """Cast one raw value to its schema type, or None when it is absent or does not parse.

    Args:
        value: the tag's ``content`` or the header's value.
        data_type: ``text``, ``number``, ``boolean`` or ``datetime``.

    Returns:
        ``str`` (≤ 500 characters), ``float``, ``bool``, or epoch milliseconds (``int``) for a
        datetime; None when the field is to be omitted.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if data_type == "text":
        return text[:MAX_TEXT_CHARS]
    if data_type == "number":
        if not _NUMBER.fullmatch(text):
            return None
        number = float(text)
        return number if math.isfinite(number) else None
    if data_type == "boolean":
        low = text.lower()
        return True if low in TRUE_VALUES else False if low in FALSE_VALUES else None
    if data_type == "datetime":
        return _epoch_ms(text)
    return None


def _epoch_ms(text: str) -> int | None:
    seconds = iso_seconds(text)
    return None if seconds is None else math.floor(seconds) * 1000


def meta_tags(html: bytes | str, content_type: str | None = None) -> dict[str, str]:
    """The page's head ``<meta>`` tags as lowercased name → ``content``; the first tag with a name wins."""
    tags: dict[str, str] = {}
    for name, content in head_meta(html, content_type):
        tags.setdefault(name, content)
    return tags


def from_html(html: bytes | str, schema: Schema, content_type: str | None = None) -> dict[str, Any]:
    """The schema's values from a page's head meta tags.

    Args:
        html: the page.
        schema: ``(field_name, data_type)`` pairs (:func:`schema_of`).
        content_type: the HTTP ``Content-Type``, for its charset.

    Returns:
        field_name → typed value, for the fields present and valid.
    """
    if not schema:
        return {}
    tags = meta_tags(html, content_type)
    out: dict[str, Any] = {}
    for name, dtype in schema:
        key = name.lower()
        raw = tags.get(key)
        if (raw is None or not raw.strip()) and key in OPEN_GRAPH:
            raw = tags.get(OPEN_GRAPH[key])
        value = coerce(raw, dtype)
        if value is not None:
            out[name] = value
    return out


def from_headers(headers: Mapping[str, str], schema: Schema) -> dict[str, Any]:
    """The schema's values from ``x-amz-meta-<field>`` headers (names case-insensitive).

    Args:
        headers: request or stored headers.
        schema: ``(field_name, data_type)`` pairs.

    Returns:
        field_name → typed value, for the fields present and valid.
    """
    if not schema:
        return {}
    meta = amz_meta_headers(headers)
    out: dict[str, Any] = {}
    for name, dtype in schema:
        value = coerce(meta.get(AMZ_META_PREFIX + name.lower()), dtype)
        if value is not None:
            out[name] = value
    return out


def amz_meta_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-amz-meta-*`` headers, names lowercased, values as UTF-8 text.

    HTTP stacks hand header bytes over as Latin-1; a value that is valid UTF-8 is re-read as UTF-8
    so that ``x-amz-meta-author: Zoë`` survives.
    """
    out: dict[str, str] = {}
    for k, v in headers.items():
        name = k.lower()
        if name.startswith(AMZ_META_PREFIX) and len(name) > len(AMZ_META_PREFIX):
            try:
                v = v.encode("latin-1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                pass
            out[name] = v
    return out


def fingerprint_part(schema: Schema, values: Mapping[str, Any]) -> str:
    """A digest of the schema and the extracted values, for the pipeline's content fingerprint.

    Returns ``""`` without a schema, so instances without custom metadata keep their fingerprints.
    """
    if not schema:
        return ""
    blob = json.dumps([schema, sorted(values.items())], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def page_values(
    body: bytes, content_type: str | None, headers: Mapping[str, str], schema: Schema, *, upload: bool
) -> dict[str, Any]:
    """The custom metadata of one stored page: an upload's headers, or a crawled HTML page's meta tags.

    Args:
        body: the stored page's bytes.
        content_type: its ``Content-Type``.
        headers: its stored headers (an upload's carry its ``x-amz-meta-*`` headers).
        schema: ``(field_name, data_type)`` pairs; empty means no work at all.
        upload: the item was uploaded (object metadata) rather than crawled (meta tags).

    Returns:
        field_name → typed value.
    """
    if not schema:
        return {}
    if upload:
        return from_headers(headers, schema)
    ctype = mime_type(content_type)
    if ctype and ctype not in HTML_TYPES:
        return {}  # crawled PDFs and text files have no <head>
    return from_html(body, schema, content_type)
