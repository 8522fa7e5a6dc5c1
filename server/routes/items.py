"""``/instances/{id}/items``: upload files, list, inspect, delete and re-index items.

Every instance takes uploads (an ``r2`` instance holds nothing else).  An upload's
part filename (or a ``key`` form field) is the item's key, e.g.
``customer-a/contracts/contract-1.pdf``; the key becomes the ``filename`` and
``folder`` metadata that filters and tenant tokens work on.  The key is never
used as a filesystem path: the raw store names files by the item's UUID.

The original bytes are stored in the raw store (``<item id>-source``) and the
converted Markdown as the item's ``text/markdown`` raw page; the item is then
marked ``fetched`` and the server's index worker embeds it like a crawled page.
The request body is read as a stream and refused with 413 as soon as the file
passes ``settings.max_page_bytes``.  ``x-amz-meta-<field>`` request headers (R2's object
metadata) are kept with both stored copies; the indexer reads the instance's
``custom_metadata`` fields from them.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from indexer.convert import ConversionError, UnsupportedFileType, convert, file_kind
from indexer.custom_metadata import amz_meta_headers
from indexer.instance import InstanceConfig
from indexer.pathfilter import PathFilter
from indexer.pipeline import TITLE_HEADER
from indexer.rawstore import RawPage
from indexer.service import IndexService
from indexer.state import StateStore, item_id_for
from server.auth import EditDep, Principal, ReadDep
from server.deps import AccountDep, ServiceDep, SettingsDep, StateDep, load_instance
from server.errors import APIError, envelope
from server.schemas import item_public

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/client/v4/accounts/{account_id}/ai-search/instances/{instance_id}/items", tags=["items"])

MAX_KEY_LENGTH = 1024  # bytes of UTF-8, as for R2 object keys
MAX_FIELD_BYTES = 64 * 1024  # non-file form fields (context, key)
MULTIPART_OVERHEAD = 256 * 1024  # body bytes allowed beyond the file limit (headers, other fields)
SOURCE_SUFFIX = "-source"  # raw-store name of an upload's original bytes
ITEM_STATUSES = ("queued", "fetched", "indexed", "error", "skipped", "deleted")
MARKDOWN = "text/markdown; charset=utf-8"


# --- multipart reading ----------------------------------------------------------------
@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Upload:
    """The parsed upload form."""

    filename: str | None
    content_type: str | None
    data: bytes
    fields: dict[str, str]


class _TooLarge(Exception):
    pass


class _Skipped(Exception):
    pass


async def read_upload(request: Request, max_file_bytes: int) -> Upload:
    """Stream a ``multipart/form-data`` body, keeping at most ``max_file_bytes`` of the file.

    Raises:
        APIError: 400 malformed form, 413 file over the limit, 415 not multipart.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise APIError(415, "body: send the file as multipart/form-data with a 'file' part (curl -F file=@path)")
    declared = request.headers.get("content-length")
    body_limit = max_file_bytes + MULTIPART_OVERHEAD
    if declared and declared.isdigit() and int(declared) > body_limit:
        raise APIError(413, _too_large(max_file_bytes))

    parts: list[_Part] = []
    current: list[_Part] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}

    def on_part_begin() -> None:
        current[:] = [_Part()]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        part = current[0]
        name = header["field"].decode("latin-1").strip().lower()
        value = header["value"].decode("latin-1").strip()
        part.headers[name] = value
        header["field"], header["value"] = bytearray(), bytearray()
        if name == "content-disposition":
            _, opts = parse_options_header(value)
            part.name = opts.get(b"name", b"").decode("latin-1")
            if b"filename" in opts:
                try:
                    part.filename = opts[b"filename"].decode("utf-8")
                except UnicodeDecodeError:
                    raise APIError(400, "file: the filename is not valid UTF-8") from None
        elif name == "content-type":
            part.content_type = value

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current[0]
        part.data += data[start:end]
        limit = max_file_bytes if part.filename is not None else MAX_FIELD_BYTES
        if len(part.data) > limit:
            raise _TooLarge(part.name)

    def on_part_end() -> None:
        parts.append(current[0])

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise APIError(413, _too_large(max_file_bytes))
            parser.write(chunk)
        parser.finalize()
    except _TooLarge as exc:
        if str(exc) == "file" or not str(exc):
            raise APIError(413, _too_large(max_file_bytes)) from None
        raise APIError(413, f"{exc}: form fields are limited to {MAX_FIELD_BYTES} bytes") from None
    except APIError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise APIError(400, f"body: malformed multipart/form-data ({exc})") from None

    files = [p for p in parts if p.name == "file"]
    if not files:
        raise APIError(400, "file: field required (send the file as a 'file' part: curl -F file=@path)")
    if len(files) > 1:
        raise APIError(400, "file: send one file per request")
    fields: dict[str, str] = {}
    for p in parts:
        if p.name in ("context", "key") and p.filename is None:
            try:
                fields[p.name] = bytes(p.data).decode("utf-8")
            except UnicodeDecodeError:
                raise APIError(400, f"{p.name}: not valid UTF-8") from None
    f = files[0]
    return Upload(filename=f.filename, content_type=f.content_type, data=bytes(f.data), fields=fields)


def _too_large(limit: int) -> str:
    return f"file: larger than the {limit} byte ({limit / (1024 * 1024):g} MB) file size limit"


# --- keys ---------------------------------------------------------------------------------
def validate_key(raw: str | None, *, field_name: str = "file") -> str:
    """Check an object key such as ``customer-a/contracts/contract-1.pdf``.

    Keys are never filesystem paths here, but keys that look like traversal or
    absolute paths are refused so that no client can rely on them being one.

    Raises:
        APIError: 400 naming the field.
    """
    if raw is None or not raw.strip():
        raise APIError(400, f"{field_name}: the object key (filename) is empty")
    key = raw
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise APIError(400, f"{field_name}: the object key is longer than {MAX_KEY_LENGTH} bytes")
    for pos, ch in enumerate(key):
        if unicodedata.category(ch) == "Cc":
            raise APIError(400, f"{field_name}: control character U+{ord(ch):04X} at position {pos} in the object key")
    if "\\" in key:
        raise APIError(400, f"{field_name}: backslashes are not allowed in object keys (use '/' between folders)")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise APIError(400, f"{field_name}: the object key must be relative (no leading '/' or drive letter)")
    if key.endswith("/"):
        raise APIError(400, f"{field_name}: the object key names a folder, not a file")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise APIError(400, f"{field_name}: the object key may not contain empty, '.' or '..' path segments")
        if segment != segment.strip():
            raise APIError(400, f"{field_name}: path segments may not start or end with whitespace")
    return key


def folder_of(key: str) -> str:
    """``customer-a/contracts/contract-1.pdf`` → ``customer-a/contracts/`` (root files: ``""``)."""
    return key[: key.rfind("/") + 1]


# --- views ---------------------------------------------------------------------------------
def item_view(item: dict[str, Any]) -> dict[str, Any]:
    """The public item, with the upload fields."""
    return {
        **item_public(item),
        "filename": item.get("filename") or item["key"],
        "context": item.get("context"),
        "origin": item.get("origin"),
    }


def _visible(principal: Principal, item: dict[str, Any]) -> bool:
    return not principal.folder_prefix or (item.get("folder") or "").startswith(principal.folder_prefix)


def _load_item(state: StateStore, principal: Principal, instance_id: str, item_id: str) -> dict[str, Any]:
    load_instance(state, instance_id)
    item = state.get_item(instance_id, item_id)
    if item is None or not _visible(principal, item):
        raise APIError(404, f"item {item_id!r} not found")
    return item


def skip_reason(config: InstanceConfig, key: str) -> str | None:
    """Why an ``r2`` instance's ``source_params`` keep ``key`` out of the index, or None.

    ``prefix`` limits the instance to a folder; include/exclude globs are matched
    against ``/<key>`` (the seeds' R2 examples: include ``/docs/**``, exclude
    ``/docs/drafts/**``), a pattern without a leading ``/`` or ``*`` being read
    as if it had one.  Website instances' patterns are URL patterns, so they do
    not apply to uploads.
    """
    if config.type != "r2":
        return None
    params = config.source_params
    if params.prefix and not key.startswith(params.prefix.lstrip("/")):
        return f"Skipped: outside the instance's prefix {params.prefix!r}"
    if not (params.include_items or params.exclude_items):
        return None

    def rooted(patterns: list[str]) -> list[str]:
        return [p if p.startswith(("/", "*")) else "/" + p for p in patterns]

    return PathFilter(rooted(params.include_items), rooted(params.exclude_items)).skip_reason("/" + key)


def _store_converted(
    service: IndexService,
    item: dict[str, Any],
    data: bytes,
    content_type: str | None,
    amz_meta: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Convert stored/uploaded bytes and queue the item for indexing (or record why it is not indexed).

    ``amz_meta`` (the upload's ``x-amz-meta-*`` headers) is kept on the stored page, where the
    indexer reads the instance's ``custom_metadata`` fields from it.
    """
    now = time.time()
    instance_id, item_id, key = item["instance_id"], item["id"], item["key"]
    _row, config = load_instance(service.state, instance_id)
    reason = skip_reason(config, key)
    try:
        if reason:
            raise _Skipped(reason)
        doc = convert(data, key, content_type)
    except (ConversionError, UnsupportedFileType, _Skipped) as exc:
        status, message = ("skipped", str(exc)) if isinstance(exc, _Skipped) else ("error", f"file: {exc}")
        service.vectors.delete_item(instance_id, item_id)
        service.raw.delete(instance_id, item_id)
        service.state.update_item(
            item_id, status=status, error=message, chunks=0, content_hash=None, pending_job=None, fetched_at=now
        )
        return service.state.get_item_by_id(item_id)  # type: ignore[return-value]
    page = RawPage(
        url=key,
        status=200,
        body=doc.markdown.encode("utf-8"),
        fetched_at=now,
        content_type=MARKDOWN,
        headers={**(amz_meta or {}), TITLE_HEADER: doc.title, "x-sitesearch-converted-from": doc.mime},
    )
    service.raw.put(instance_id, item_id, page)
    service.state.update_item(
        item_id,
        status="fetched",
        error=None,
        title=doc.title,
        content_hash=None,  # re-embed even if the text is unchanged: context or metadata may have changed
        pending_job=None,
        fetched_at=now,
    )
    return service.state.get_item_by_id(item_id)  # type: ignore[return-value]


def _save_upload(
    service: IndexService, instance_id: str, key: str, upload: Upload, amz_meta: Mapping[str, str] | None = None
) -> dict[str, Any]:
    item_id = item_id_for(instance_id, key)
    mime = upload.content_type or "application/octet-stream"
    headers = {**(amz_meta or {}), "content-length": str(len(upload.data))}
    service.raw.put(
        instance_id,
        item_id + SOURCE_SUFFIX,
        RawPage(url=key, status=200, body=upload.data, content_type=mime, headers=headers),
    )
    item = service.state.ensure_item(instance_id, key, origin="upload")
    service.state.update_item(
        item["id"],
        origin="upload",
        folder=folder_of(key),
        filename=key,
        context=upload.fields.get("context") or None,
        http_status=None,
    )
    item = service.state.get_item_by_id(item["id"])  # type: ignore[assignment]
    return _store_converted(service, item, upload.data, upload.content_type, amz_meta)


# --- routes ---------------------------------------------------------------------------------
@router.post("")
async def upload_item(
    request: Request,
    _: AccountDep,
    principal: EditDep,
    state: StateDep,
    service: ServiceDep,
    settings: SettingsDep,
    instance_id: str,
) -> dict[str, Any]:
    """Upload one file (multipart ``file``; optional ``context`` and ``key`` fields; ``x-amz-meta-*`` headers)."""
    await run_in_threadpool(load_instance, state, instance_id)
    upload = await read_upload(request, settings.max_page_bytes)
    key = validate_key(upload.fields.get("key") or upload.filename, field_name="key" if "key" in upload.fields else "file")
    if principal.folder_prefix and not key.startswith(principal.folder_prefix):
        raise APIError(403, f"file: this token may only upload under {principal.folder_prefix!r}")
    try:
        file_kind(key, upload.content_type)
    except UnsupportedFileType as exc:
        raise APIError(415, str(exc)) from None
    amz_meta = amz_meta_headers(request.headers)
    item = await run_in_threadpool(_save_upload, service, instance_id, key, upload, amz_meta)
    return envelope(item_view(item))


@router.get("")
def list_items(
    _: AccountDep,
    principal: ReadDep,
    state: StateDep,
    instance_id: str,
    status: Annotated[str | None, Query(pattern="^(queued|fetched|indexed|error|skipped|deleted)$")] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Items of an instance by key; ``status=queued`` includes items waiting to be embedded."""
    load_instance(state, instance_id)
    statuses = ("queued", "fetched") if status == "queued" else ((status,) if status else None)
    rows, total = state.list_items_where(
        instance_id, statuses=statuses, folder_prefix=principal.folder_prefix, limit=per_page, offset=(page - 1) * per_page
    )
    return envelope(
        [item_view(r) for r in rows],
        result_info={"page": page, "per_page": per_page, "count": len(rows), "total_count": total},
    )


@router.get("/{item_id}")
def get_item(_: AccountDep, principal: ReadDep, state: StateDep, instance_id: str, item_id: str) -> dict[str, Any]:
    return envelope(item_view(_load_item(state, principal, instance_id, item_id)))


@router.delete("/{item_id}")
def delete_item(
    _: AccountDep, principal: EditDep, state: StateDep, service: ServiceDep, instance_id: str, item_id: str
) -> dict[str, Any]:
    """Remove an item's chunks and stored bytes; uploaded items are forgotten, crawled pages marked ``deleted``."""
    item = _load_item(state, principal, instance_id, item_id)
    state.update_item(item_id, status="deleted", pending_job=None)  # the index worker no longer claims it
    service.indexer.remove_item(item)
    service.raw.delete(instance_id, item_id + SOURCE_SUFFIX)
    if item.get("origin") == "upload":
        state.delete_item(item_id)
    return envelope({"id": item_id})


@router.post("/{item_id}/sync")
def sync_item(
    _: AccountDep, principal: EditDep, state: StateDep, service: ServiceDep, instance_id: str, item_id: str
) -> dict[str, Any]:
    """Re-index one item: an upload from its stored original, a crawled page from its stored raw page."""
    item = _load_item(state, principal, instance_id, item_id)
    if item.get("origin") == "upload":
        source = service.raw.get(instance_id, item_id + SOURCE_SUFFIX)
        if source is None:
            raise APIError(409, f"item {item_id!r}: the uploaded file is no longer stored; upload it again")
        stored = _store_converted(service, item, source.body, source.content_type, amz_meta_headers(source.headers))
        return envelope(item_view(stored))
    if service.raw.get(instance_id, item_id) is None:
        raise APIError(400, f"item {item_id!r} has no stored page to re-index; use a sync job (POST .../jobs) to re-fetch it")
    state.update_item(item_id, status="fetched", content_hash=None, pending_job=None, error=None)
    return envelope(item_view(state.get_item_by_id(item_id)))  # type: ignore[arg-type]
