"""Uploaded files → Markdown (our counterpart of Cloudflare's "Markdown Conversion").

Which files are accepted follows the seeds' "R2" data-source page: every plain-text
kind listed there is indexed as text, and the rich formats are converted to
Markdown.  The file's extension decides its kind; the part's ``Content-Type`` is
only used when the name has no known extension.

Converters, chosen for being small, pure Python, actively maintained and free of
heavy dependencies (``markitdown`` was considered, but its PDF/Office extras pull
in pandas, pdfminer, mammoth and magika for the same result):

- PDF: ``pypdf`` (text layer of each page; scanned images without text yield nothing).
- DOCX: ``python-docx`` (headings, list items and tables kept in document order).
- XLSX/XLSM: ``openpyxl`` in read-only mode (one Markdown table per sheet).
- XLS: ``xlrd`` (the legacy binary format; xlrd 2 reads only ``.xls``).
- ODT/ODS: the OpenDocument ``content.xml`` read with ``lxml`` directly (the format
  is plain XML; the ``odfpy`` package has had no release since 2020).
- HTML: the crawler's own extractor (:func:`indexer.extract.extract_html`, trafilatura).
- XML/SVG: text content via ``lxml`` with entity expansion and network access off.
- CSV: the standard library ``csv`` module.

Images (``.jpeg .jpg .png .webp``), Apple ``.numbers``, ``.xlsb`` and ``.et`` need
models or formats we do not ship and are refused as unsupported (HTTP 415).
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lxml import etree

from indexer.extract import extract_html, mime_type

logger = logging.getLogger(__name__)

#: Plain-text extensions of the seeds' table (markdown kinds are passed through).
TEXT_EXTENSIONS = frozenset(
    """txt rst log ini conf env properties gitignore editorconfig toml markdown md mdx tex latex sh bat ps1 sgml
    json yaml yml css js php py rb java c cpp cxx h hpp go rs swift dart el""".split()
)
#: Rich formats converted to Markdown, by extension → kind.
RICH_EXTENSIONS = {
    "pdf": "pdf",
    "html": "html",
    "htm": "html",
    "xml": "xml",
    "svg": "xml",
    "docx": "docx",
    "xlsx": "xlsx",
    "xlsm": "xlsx",
    "xls": "xls",
    "ods": "ods",
    "odt": "odt",
    "csv": "csv",
}
#: Listed by the seeds, but needing a model or a format we do not ship.
REFUSED_EXTENSIONS = {
    "jpeg": "image description needs a vision model, which this server does not ship",
    "jpg": "image description needs a vision model, which this server does not ship",
    "png": "image description needs a vision model, which this server does not ship",
    "webp": "image description needs a vision model, which this server does not ship",
    "numbers": "Apple Numbers files are not supported; export the sheet as .xlsx or .csv",
    "xlsb": "binary Excel (.xlsb) files are not supported; save the workbook as .xlsx",
    "et": "WPS spreadsheets (.et) are not supported; save the sheet as .xlsx",
}
#: Content types accepted when the filename has no known extension.
MIME_KINDS = {
    "text/plain": "text",
    "text/markdown": "text",
    "text/x-markdown": "text",
    "text/toml": "text",
    "text/css": "text",
    "text/sgml": "text",
    "text/x-python": "text",
    "application/json": "text",
    "application/x-yaml": "text",
    "application/javascript": "text",
    "application/x-tex": "text",
    "application/x-latex": "text",
    "application/x-sh": "text",
    "text/html": "html",
    "application/xml": "xml",
    "text/xml": "xml",
    "image/svg+xml": "xml",
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.ms-excel.sheet.macroenabled.12": "xlsx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
}
KIND_MIME = {
    "text": "text/plain",
    "html": "text/html",
    "xml": "application/xml",
    "pdf": "application/pdf",
    "csv": "text/csv",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "xls": "application/vnd.ms-excel",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
}
#: Dotfiles whose whole name is the "extension" (``.gitignore``, ``.env``).
_DOTFILE_NAMES = frozenset({"gitignore", "editorconfig", "env"})
MAX_UNZIPPED_BYTES = 64 * 1024 * 1024  # zip members read from office files (zip-bomb guard)
MAX_TABLE_CELLS = 500_000  # spreadsheets: cells converted before the rest is cut off


class UnsupportedFileType(ValueError):
    """The file's type is not one we index (HTTP 415)."""


class ConversionError(ValueError):
    """The file claims a supported type but could not be read."""


@dataclass(frozen=True, slots=True)
class Converted:
    """A converted document."""

    markdown: str
    title: str
    kind: str
    mime: str


def file_kind(filename: str, content_type: str | None = None) -> str:
    """The converter kind for a file (``text``, ``pdf``, ``docx``, ...).

    Args:
        filename: the file's name or key (its extension decides).
        content_type: the uploaded part's Content-Type, used when the extension is unknown.

    Raises:
        UnsupportedFileType: the type is not supported (the message says why).
    """
    base = posixpath.basename(filename)
    stem, dot, ext = base.rpartition(".")
    ext = ext.lower() if dot else ""
    if dot and not stem and ext in _DOTFILE_NAMES:
        return "text"
    if ext in TEXT_EXTENSIONS:
        return "text"
    if ext in RICH_EXTENSIONS:
        return RICH_EXTENSIONS[ext]
    if ext in REFUSED_EXTENSIONS:
        raise UnsupportedFileType(f"file: .{ext} — {REFUSED_EXTENSIONS[ext]}")
    mime = mime_type(content_type)
    if mime in MIME_KINDS:
        return MIME_KINDS[mime]
    what = f".{ext} files" if ext else f"files of type {mime or 'unknown'!r} without an extension"
    raise UnsupportedFileType(f"file: {what} are not supported (see docs/api.md for the accepted types)")


def convert(data: bytes, filename: str, content_type: str | None = None) -> Converted:
    """Convert an uploaded file to Markdown.

    Args:
        data: the file's bytes.
        filename: its name or key (decides the kind; used as the fallback title).
        content_type: the part's Content-Type.

    Returns:
        The Markdown, a title and the detected kind and MIME type.

    Raises:
        UnsupportedFileType: unsupported type.
        ConversionError: the file could not be read as its type.
    """
    kind = file_kind(filename, content_type)
    fallback_title = posixpath.basename(filename)
    try:
        markdown, title = _CONVERTERS[kind](data, filename)
    except (UnsupportedFileType, ConversionError):
        raise
    except Exception as exc:  # third-party parsers raise anything on a corrupt file
        logger.info("converting %s as %s failed: %s", filename, kind, exc)
        raise ConversionError(f"could not read the file as {kind.upper()}: {exc.__class__.__name__}: {exc}") from None
    return Converted(markdown=markdown.strip(), title=(title or fallback_title).strip(), kind=kind, mime=KIND_MIME[kind])


# --- converters --------------------------------------------------------------------
def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise ConversionError("the file contains NUL bytes: it is not a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _text(data: bytes, _name: str) -> tuple[str, str]:
    return _decode(data), ""


def _html(data: bytes, name: str) -> tuple[str, str]:
    doc = extract_html(data, f"file:///{name}", fast=len(data) > 1024 * 1024)
    return doc.markdown, doc.title


def _parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML: no entity expansion, no DTD, no network, no huge trees."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    return etree.fromstring(data, parser=parser)


def _xml(data: bytes, _name: str) -> tuple[str, str]:
    root = _parse_xml(data)
    parts = (t.strip() for t in root.itertext())
    return "\n".join(p for p in parts if p), ""


def _pdf(data: bytes, _name: str) -> tuple[str, str]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise ConversionError("the PDF is password-protected")
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    title = ""
    try:
        title = str((reader.metadata or {}).get("/Title") or "")
    except Exception:  # broken info dictionaries are common
        title = ""
    return "\n\n".join(p for p in pages if p), title


def _md_table(rows: Iterable[Iterable[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [r for r in cells if any(r)]
    if not cells:
        return ""
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ").strip()


def _limited(rows: Iterable[Iterable[object]], budget: list[int]) -> Iterator[list[object]]:
    for row in rows:
        values = list(row)
        budget[0] -= len(values)
        if budget[0] < 0:
            return
        yield values


def _docx(data: bytes, _name: str) -> tuple[str, str]:
    import docx
    from docx.table import Table

    _check_zip(data)
    document = docx.Document(io.BytesIO(data))
    out: list[str] = []
    title = document.core_properties.title or ""
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            out.append(_md_table([c.text for c in row.cells] for row in block.rows))
            continue
        text = block.text.strip()
        if not text:
            continue
        style = (block.style.name if block.style is not None else "") or ""
        if style == "Title":
            out.append(f"# {text}")
            title = title or text
        elif style.startswith("Heading"):
            level = style.removeprefix("Heading").strip()
            out.append("#" * (int(level) + 1 if level.isdigit() else 2) + f" {text}")
        elif "List" in style:
            out.append(f"- {text}")
        else:
            out.append(text)
    return "\n\n".join(p for p in out if p), title


def _xlsx(data: bytes, _name: str) -> tuple[str, str]:
    import openpyxl

    _check_zip(data)
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    budget = [MAX_TABLE_CELLS]
    try:
        sheets = [(ws.title, _md_table(_limited(ws.iter_rows(values_only=True), budget))) for ws in workbook.worksheets]
    finally:
        workbook.close()
    return _sheets(sheets), ""


def _xls(data: bytes, _name: str) -> tuple[str, str]:
    import xlrd

    book = xlrd.open_workbook(file_contents=data, on_demand=True)
    budget = [MAX_TABLE_CELLS]
    sheets = []
    for sheet in book.sheets():
        rows = (sheet.row_values(i) for i in range(sheet.nrows))
        sheets.append((sheet.name, _md_table(_limited(rows, budget))))
    return _sheets(sheets), ""


def _sheets(sheets: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"## {name}\n\n{table}" for name, table in sheets if table)


def _csv(data: bytes, _name: str) -> tuple[str, str]:
    text = _decode(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    return _md_table(_limited(csv.reader(io.StringIO(text), dialect), [MAX_TABLE_CELLS])), ""


# --- OpenDocument ------------------------------------------------------------------
_ODF_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_ODF_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_T = f"{{{_ODF_TEXT}}}"
_TB = f"{{{_ODF_TABLE}}}"


def _check_zip(data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ConversionError("the file is not a valid Office/OpenDocument (zip) file") from None
    if sum(info.file_size for info in archive.infolist()) > MAX_UNZIPPED_BYTES:
        raise ConversionError(f"the file unpacks to more than {MAX_UNZIPPED_BYTES} bytes")
    return archive


def _odf_root(data: bytes) -> etree._Element:
    archive = _check_zip(data)
    try:
        content = archive.read("content.xml")
    except KeyError:
        raise ConversionError("the OpenDocument file has no content.xml") from None
    return _parse_xml(content)


def _odf_text(el: etree._Element) -> str:
    """Text of a paragraph, honouring ``text:s`` (spaces), ``text:tab`` and ``text:line-break``."""
    out: list[str] = [el.text or ""]
    for child in el:
        if child.tag == f"{_T}s":
            out.append(" " * int(child.get(f"{_T}c", "1") or 1))
        elif child.tag == f"{_T}tab":
            out.append("\t")
        elif child.tag == f"{_T}line-break":
            out.append("\n")
        elif child.tag == f"{_T}note":
            pass
        else:
            out.append(_odf_text(child))
        out.append(child.tail or "")
    return "".join(out)


def _odf_table(table: etree._Element, budget: list[int]) -> str:
    rows = []
    for row in table.iter(f"{_TB}table-row"):
        cells = []
        for cell in row:
            if cell.tag not in (f"{_TB}table-cell", f"{_TB}covered-table-cell"):
                continue
            text = " ".join(_odf_text(p).strip() for p in cell.iter(f"{_T}p"))
            repeat = min(int(cell.get(f"{_TB}number-columns-repeated", "1") or 1), 1000)
            cells.extend([text] * (repeat if text else 1))
        while cells and not cells[-1]:
            cells.pop()
        rows.append(cells)
    return _md_table(_limited(rows, budget))


def _odt(data: bytes, _name: str) -> tuple[str, str]:
    root = _odf_root(data)
    out: list[str] = []
    title = ""
    budget = [MAX_TABLE_CELLS]
    body = root.find(f".//{{urn:oasis:names:tc:opendocument:xmlns:office:1.0}}text")
    if body is None:
        raise ConversionError("the OpenDocument file has no text body")

    def walk(el: etree._Element, in_list: bool) -> None:
        nonlocal title
        for child in el:
            if child.tag == f"{_T}h":
                text = _odf_text(child).strip()
                level = int(child.get(f"{_T}outline-level", "1") or 1)
                if text:
                    out.append("#" * min(level + 1, 6) + " " + text)
                    title = title or text
            elif child.tag == f"{_T}p":
                text = _odf_text(child).strip()
                if text:
                    out.append(f"- {text}" if in_list else text)
            elif child.tag == f"{_T}list":
                walk(child, True)
            elif child.tag in (f"{_T}list-item", f"{_T}section"):
                walk(child, in_list)
            elif child.tag == f"{_TB}table":
                out.append(_odf_table(child, budget))

    walk(body, False)
    return "\n\n".join(p for p in out if p), title


def _ods(data: bytes, _name: str) -> tuple[str, str]:
    root = _odf_root(data)
    budget = [MAX_TABLE_CELLS]
    sheets = [(t.get(f"{_TB}name", "Sheet"), _odf_table(t, budget)) for t in root.iter(f"{_TB}table")]
    return _sheets(sheets), ""


_CONVERTERS = {
    "text": _text,
    "html": _html,
    "xml": _xml,
    "pdf": _pdf,
    "docx": _docx,
    "xlsx": _xlsx,
    "xls": _xls,
    "csv": _csv,
    "odt": _odt,
    "ods": _ods,
}
