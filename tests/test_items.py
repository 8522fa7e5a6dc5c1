"""Uploads: every supported kind is converted, indexed and found; limits, types and keys are enforced.

Documents are built here with the real writers (python-docx, openpyxl, a
hand-written PDF, an OpenDocument zip) and sent through the real API; the
server's index worker embeds them with the real model into real Chroma.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import API_TOKEN, make_settings, wait_until

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
BOUNDARY = "sitesearch-test-boundary-7d1f"
LIMIT = 64 * 1024  # max_page_bytes for this module's server


# --- document builders (shared with test_metafilter) -----------------------------------------
def multipart(
    filename: str | bytes, data: bytes, *, context: str | None = None, key: str | None = None, content_type: str = "application/octet-stream"
) -> tuple[bytes, dict[str, str]]:
    """A raw multipart body (so filenames reach the server byte for byte, NULs and backslashes included)."""
    fname = filename.encode("utf-8") if isinstance(filename, str) else filename
    out = io.BytesIO()
    for name, value in (("context", context), ("key", key)):
        if value is not None:
            out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            out.write(value.encode("utf-8") + b"\r\n")
    out.write(f"--{BOUNDARY}\r\n".encode())
    out.write(b'Content-Disposition: form-data; name="file"; filename="' + fname + b'"\r\n')
    out.write(f"Content-Type: {content_type}\r\n\r\n".encode())
    out.write(data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue(), {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def upload(client: TestClient, instance: str, filename: str | bytes, data: bytes, **kw: Any) -> Any:
    headers_extra = kw.pop("headers", None)
    body, headers = multipart(filename, data, **kw)
    if headers_extra:
        headers.update(headers_extra)
    return client.post(f"{ACCOUNT}/instances/{instance}/items", content=body, headers=headers)


def make_pdf(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF with a Helvetica text layer."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*" for ln in lines
    ) + " ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text.encode("latin-1") + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def make_docx(heading: str, paragraphs: list[str], table: list[list[str]]) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    for p in paragraphs:
        document.add_paragraph(p)
    t = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for c, value in enumerate(row):
            t.cell(r, c).text = value
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def make_xlsx(rows: list[list[Any]], title: str = "Inventory") -> bytes:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def make_odt(heading: str, paragraphs: list[str]) -> bytes:
    ns = (
        'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
        'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
        'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
    )
    body = f'<text:h text:outline-level="1">{heading}</text:h>' + "".join(f"<text:p>{p}</text:p>" for p in paragraphs)
    content = f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ns}><office:body><office:text>{body}</office:text></office:body></office:document-content>'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text", compress_type=zipfile.ZIP_STORED)
        z.writestr("content.xml", content)
    return buf.getvalue()


def wait_indexed(client: TestClient, instance: str, item_id: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        item = client.get(f"{ACCOUNT}/instances/{instance}/items/{item_id}", headers=AUTH).json()["result"]
        return item if item["status"] in ("indexed", "error", "skipped") else None

    return wait_until(done, timeout=timeout)


def search(client: TestClient, instance: str, query: str, **extra: Any) -> Any:
    return client.post(f"{ACCOUNT}/instances/{instance}/search", json={"query": query, **extra}, headers=AUTH)


# --- fixtures ---------------------------------------------------------------------------------
DOCS: dict[str, tuple[bytes, str, str]] = {}  # key → (bytes, question, unique phrase)


def _documents() -> dict[str, tuple[bytes, str, str]]:
    return {
        "kinds/notes.txt": (b"The lighthouse keeper paints the lamp room cobalt blue every April.", "What colour is the lamp room painted?", "cobalt blue"),
        "kinds/guide.md": (b"# Guide\n\nThe submarine galley bakes sourdough bread at exactly 212 degrees.", "What does the submarine galley bake?", "sourdough"),
        "kinds/script.py": (b'"""Feed the tortoise."""\n\ndef feed_tortoise():\n    # tortoises eat dandelion leaves on Tuesdays\n    return "dandelion"\n', "What do tortoises eat on Tuesdays?", "dandelion"),
        "kinds/page.html": (
            b"<html><head><title>Glacier hut</title></head><body><article><h1>Glacier hut</h1>"
            b"<p>The glacier hut stores forty woollen blankets for stranded climbers during winter storms.</p>"
            b"<p>Climbers must sign the logbook before leaving the hut in the morning.</p></article></body></html>",
            "How many blankets does the glacier hut store?",
            "woollen blankets",
        ),
        "kinds/report.pdf": (make_pdf(["The volcano observatory measures sulphur dioxide", "emissions every ninety minutes."]), "How often does the observatory measure sulphur dioxide?", "sulphur dioxide"),
        "kinds/manual.docx": (
            make_docx("Beekeeping manual", ["Queen bees in the orchard hives are marked with a yellow dot."], [["Hive", "Frames"], ["North", "12"]]),
            "How are queen bees marked in the orchard hives?",
            "yellow dot",
        ),
        "kinds/stock.xlsx": (make_xlsx([["Item", "Count"], ["Harpsichord strings", 37], ["Tuning forks", 5]]), "How many harpsichord strings are in stock?", "Harpsichord strings"),
        "kinds/fleet.csv": (b"vessel,captain\nNarwhal Explorer,Ingrid Solberg\nPolar Finch,Tomas Aalto\n", "Who captains the Narwhal Explorer?", "Ingrid Solberg"),
        "kinds/minutes.odt": (make_odt("Village council minutes", ["The council approved a new footbridge across the millstream."]), "What did the village council approve?", "footbridge"),
    }


@pytest.fixture(scope="module")
def api(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("items")
    settings = make_settings(base / "data", model_dir, max_page_bytes=LIMIT)
    with TestClient(create_app(settings)) as client:
        r = client.post(f"{ACCOUNT}/instances", json={"id": "files", "type": "r2"}, headers=AUTH)
        assert r.status_code == 200, r.text
        ids = {}
        for key, (data, _q, _p) in _documents().items():
            r = upload(client, "files", key, data, context=f"context of {key}")
            assert r.status_code == 200, (key, r.text)
            ids[key] = r.json()["result"]["id"]
        items = {key: wait_indexed(client, "files", item_id) for key, item_id in ids.items()}
        yield {"client": client, "ids": ids, "items": items, "base": base, "settings": settings}


# --- tests ------------------------------------------------------------------------------------
def test_every_kind_is_indexed(api: dict[str, Any]) -> None:
    for key, item in api["items"].items():
        assert item["status"] == "indexed", (key, item)
        assert item["chunks"] >= 1, (key, item)
        assert item["filename"] == key
        assert item["folder"] == "kinds/"
        assert item["origin"] == "upload"


@pytest.mark.parametrize("key", list(_documents()))
def test_each_kind_answers_its_question(api: dict[str, Any], key: str) -> None:
    _data, question, phrase = _documents()[key]
    r = search(api["client"], "files", question, max_num_results=3)
    assert r.status_code == 200, r.text
    top = r.json()["result"]["data"][0]
    assert top["filename"] == key, [d["filename"] for d in r.json()["result"]["data"]]
    assert phrase.lower() in top["content"][0]["text"].lower()
    assert top["attributes"]["folder"] == "kinds/"
    assert top["attributes"]["file"]["context"] == f"context of {key}"


def test_docx_and_xlsx_keep_structure(api: dict[str, Any]) -> None:
    from indexer.convert import convert

    docs = _documents()
    md = convert(docs["kinds/manual.docx"][0], "manual.docx").markdown
    assert "## Beekeeping manual" in md and "| Hive | Frames |" in md
    md = convert(docs["kinds/stock.xlsx"][0], "stock.xlsx").markdown
    assert "## Inventory" in md and "| Harpsichord strings | 37 |" in md
    md = convert(docs["kinds/minutes.odt"][0], "minutes.odt").markdown
    assert md.startswith("## Village council minutes")


def test_too_large_is_413(api: dict[str, Any]) -> None:
    client = api["client"]
    r = upload(client, "files", "big/too-big.txt", b"a" * (LIMIT + 1))
    assert r.status_code == 413, r.text
    assert "size limit" in r.json()["errors"][0]["message"]
    # a body whose declared length is far over the limit is refused before it is read
    body, headers = multipart("big/huge.txt", b"x")
    headers["Content-Length"] = str(LIMIT * 100)
    r = client.post(f"{ACCOUNT}/instances/files/items", content=body, headers=headers)
    assert r.status_code == 413, r.text
    # a chunked body (no Content-Length) is cut off while it streams in
    body, headers = multipart("big/streamed.txt", b"b" * (LIMIT * 3))
    r = client.post(f"{ACCOUNT}/instances/files/items", content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]), headers=headers)
    assert r.status_code == 413, r.text
    assert client.get(f"{ACCOUNT}/instances/files/items?per_page=100", headers=AUTH).json()["result_info"]["total_count"] == len(api["ids"])


@pytest.mark.parametrize("name", ["photo.png", "photo.jpg", "tool.exe", "budget.numbers", "noextension"])
def test_unsupported_type_is_415(api: dict[str, Any], name: str) -> None:
    r = upload(api["client"], "files", f"bad/{name}", b"\x89PNG\r\n\x1a\n\x00\x00")
    assert r.status_code == 415, r.text
    assert r.json()["errors"][0]["message"].startswith("file:")


@pytest.mark.parametrize(
    "name",
    [
        b"../evil.txt",
        b"a/../../evil.txt",
        b"/etc/evil.txt",
        b"evil\x00.txt",
        b"dir\\evil.txt",
        b"C:evil.txt",
        b"./evil.txt",
        b"a//evil.txt",
        b"evil\x1f.txt",
        b"folder/",
        b"",
        b"a" * 1021 + b".txt",
    ],
)
def test_bad_keys_are_400_and_write_nothing(api: dict[str, Any], name: bytes) -> None:
    r = upload(api["client"], "files", name, b"the evil payload text")
    assert r.status_code == 400, (name, r.text)
    assert r.json()["errors"][0]["message"].startswith("file:")
    written = [p for p in api["base"].parent.rglob("*evil*")]
    assert written == []


def test_key_field_overrides_filename(api: dict[str, Any]) -> None:
    client = api["client"]
    r = upload(client, "files", "x.txt", b"The key field places this note in a folder.", key="../escape.txt")
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith("key:")
    r = upload(client, "files", "x.txt", b"The key field places this note about otters in a folder.", key="named/otters.txt")
    assert r.status_code == 200, r.text
    item = r.json()["result"]
    assert item["key"] == "named/otters.txt" and item["folder"] == "named/"
    assert wait_indexed(client, "files", item["id"])["status"] == "indexed"
    assert client.delete(f"{ACCOUNT}/instances/files/items/{item['id']}", headers=AUTH).status_code == 200


def test_corrupt_file_is_an_error_item(api: dict[str, Any]) -> None:
    client = api["client"]
    r = upload(client, "files", "broken/scan.pdf", b"%PDF-1.4 this is not really a pdf")
    assert r.status_code == 200, r.text
    item = r.json()["result"]
    assert item["status"] == "error" and "PDF" in item["error"]
    listed = client.get(f"{ACCOUNT}/instances/files/items?status=error", headers=AUTH).json()
    assert [i["key"] for i in listed["result"]] == ["broken/scan.pdf"]
    assert listed["result"][0]["error"]
    assert client.delete(f"{ACCOUNT}/instances/files/items/{item['id']}", headers=AUTH).status_code == 200


def test_list_filters_and_paginates(api: dict[str, Any]) -> None:
    client = api["client"]
    n = len(api["ids"])
    pages = []
    for page in (1, 2, 3):
        body = client.get(f"{ACCOUNT}/instances/files/items?status=indexed&per_page=4&page={page}", headers=AUTH).json()
        assert body["result_info"]["total_count"] == n
        assert body["result_info"]["page"] == page
        pages += [i["key"] for i in body["result"]]
    assert sorted(pages) == sorted(api["ids"]) and len(pages) == n
    assert client.get(f"{ACCOUNT}/instances/files/items?status=queued", headers=AUTH).json()["result"] == []
    r = client.get(f"{ACCOUNT}/instances/files/items?status=bogus", headers=AUTH)
    assert r.status_code == 400 and "status" in r.json()["errors"][0]["message"]


def test_reupload_replaces_content_and_context(api: dict[str, Any]) -> None:
    client = api["client"]
    r = upload(client, "files", "swap/fact.txt", b"The ferry to the island leaves at seven.", context="first")
    item_id = r.json()["result"]["id"]
    wait_indexed(client, "files", item_id)
    r = upload(client, "files", "swap/fact.txt", b"The cable car to the summit leaves at nine.", context="second")
    assert r.json()["result"]["id"] == item_id
    wait_indexed(client, "files", item_id)
    hits = search(client, "files", "When does the cable car leave?", filters={"type": "eq", "key": "folder", "value": "swap/"}).json()["result"]["data"]
    assert len({h["file_id"] for h in hits}) == 1
    assert "cable car" in hits[0]["content"][0]["text"] and hits[0]["attributes"]["file"]["context"] == "second"
    client.delete(f"{ACCOUNT}/instances/files/items/{item_id}", headers=AUTH)


def test_resync_and_delete(api: dict[str, Any]) -> None:
    client = api["client"]
    r = upload(client, "files", "tmp/kites.md", b"# Kites\n\nThe festival kite is shaped like a giant squid.")
    item_id = r.json()["result"]["id"]
    assert wait_indexed(client, "files", item_id)["status"] == "indexed"
    r = client.post(f"{ACCOUNT}/instances/files/items/{item_id}/sync", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] in ("fetched", "indexed")
    assert wait_indexed(client, "files", item_id)["status"] == "indexed"
    top = search(client, "files", "What shape is the festival kite?").json()["result"]["data"][0]
    assert top["file_id"] == item_id
    r = client.delete(f"{ACCOUNT}/instances/files/items/{item_id}", headers=AUTH)
    assert r.status_code == 200
    assert client.get(f"{ACCOUNT}/instances/files/items/{item_id}", headers=AUTH).status_code == 404
    hits = search(client, "files", "What shape is the festival kite?").json()["result"]["data"]
    assert item_id not in {h["file_id"] for h in hits}
    assert client.delete(f"{ACCOUNT}/instances/files/items/{item_id}", headers=AUTH).status_code == 404


def test_web_instance_takes_uploads_and_bad_requests(api: dict[str, Any]) -> None:
    client = api["client"]
    r = client.post(f"{ACCOUNT}/instances", json={"id": "web", "type": "web-crawler", "source": "example.com"}, headers=AUTH)
    assert r.status_code == 200, r.text
    r = upload(client, "web", "extra/faq.md", b"# FAQ\n\nOur support desk answers in Esperanto on Fridays.")
    assert r.status_code == 200, r.text
    assert wait_indexed(client, "web", r.json()["result"]["id"])["status"] == "indexed"
    # no file part / not multipart / unknown instance
    r = client.post(f"{ACCOUNT}/instances/web/items", files={"attachment": ("a.txt", b"x")}, data={"context": "x"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith("file:")
    for kwargs in ({"json": {"file": "x"}}, {"data": {"context": "x"}}):
        r = client.post(f"{ACCOUNT}/instances/web/items", headers=AUTH, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 415 and "multipart/form-data" in r.json()["errors"][0]["message"]
    assert upload(client, "nope", "a.txt", b"x").status_code == 404
    # curl-style upload through httpx's own encoder works too
    r = client.post(
        f"{ACCOUNT}/instances/web/items",
        files={"file": ("press/release.txt", b"The museum reopens its dinosaur hall in May.", "text/plain")},
        data={"context": "press release"},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["key"] == "press/release.txt" and r.json()["result"]["context"] == "press release"


def test_r2_path_filters_and_prefix_apply_to_uploads(api: dict[str, Any]) -> None:
    client = api["client"]
    body = {
        "id": "filtered",
        "type": "r2",
        "source_params": {"prefix": "docs/", "include_items": ["/docs/**"], "exclude_items": ["docs/drafts/**"]},
    }
    assert client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH).status_code == 200
    kept = upload(client, "filtered", "docs/guide.md", b"# Guide\n\nPublished guide about pelicans.").json()["result"]
    draft = upload(client, "filtered", "docs/drafts/wip.md", b"Draft about pelicans.").json()["result"]
    outside = upload(client, "filtered", "misc/other.md", b"Other text about pelicans.").json()["result"]
    assert draft["status"] == "skipped" and "docs/drafts/**" in draft["error"]
    assert outside["status"] == "skipped" and "prefix" in outside["error"]
    assert wait_indexed(client, "filtered", kept["id"])["status"] == "indexed"
    hits = search(client, "filtered", "pelicans").json()["result"]["data"]
    assert {h["filename"] for h in hits} == {"docs/guide.md"}
    # loosening the rules and re-syncing the item indexes it from its stored original
    r = client.patch(f"{ACCOUNT}/instances/filtered", json={"source_params": {"exclude_items": []}}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert client.post(f"{ACCOUNT}/instances/filtered/items/{draft['id']}/sync", headers=AUTH).status_code == 200
    assert wait_indexed(client, "filtered", draft["id"])["status"] == "indexed"


def test_converter_edge_cases() -> None:
    from indexer.convert import ConversionError, UnsupportedFileType, convert, file_kind

    assert file_kind(".gitignore") == "text" and file_kind("conf/.env") == "text"
    assert file_kind("notes", "text/markdown") == "text" and file_kind("x.PDF") == "pdf"
    with pytest.raises(UnsupportedFileType):
        file_kind("x.bin", "application/octet-stream")
    laughs = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><r>&b; kept text</r>'
    assert "lollol" not in convert(laughs, "bomb.xml").markdown
    with pytest.raises(ConversionError):
        convert(b"text\x00with NUL", "bad.txt")
    with pytest.raises(ConversionError):
        convert(b"not a spreadsheet", "old.xls")
    with pytest.raises(ConversionError):
        convert(b"PK\x03\x04 broken", "broken.docx")
    assert convert("caf\xe9 au lait".encode("cp1252"), "menu.txt").markdown == "caf\xe9 au lait"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("content.xml", (
            '<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
            'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
            'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"><office:body><office:spreadsheet>'
            '<table:table table:name="Birds"><table:table-row><table:table-cell><text:p>Species</text:p></table:table-cell>'
            '<table:table-cell><text:p>Count</text:p></table:table-cell></table:table-row><table:table-row>'
            '<table:table-cell><text:p>Puffin</text:p></table:table-cell><table:table-cell><text:p>41</text:p></table:table-cell>'
            '</table:table-row></table:table></office:spreadsheet></office:body></office:document-content>'
        ))
    md = convert(buf.getvalue(), "birds.ods").markdown
    assert md == "## Birds\n\n| Species | Count |\n| --- | --- |\n| Puffin | 41 |"
