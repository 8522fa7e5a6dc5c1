"""Extraction: title, absolute links, canonical URL, main content only, and bad input."""

from __future__ import annotations

import pytest

from indexer.extract import Extracted, extract_html, extract_text_document

URL = "http://example.test/docs/guide/page.html"
ARTICLE = " ".join(
    f"The heliostat array tracks the sun with paragraph number {i} describing mirrors, motors and calibration."
    for i in range(8)
)
PAGE = f"""<!doctype html>
<html><head>
  <title>Heliostat Guide | Example Docs</title>
  <link rel="canonical" href="/docs/guide/">
  <style>.x {{ color: red }}</style>
  <script>var trackingSnippet = 1;</script>
</head><body>
  <nav><ul><li><a href="/">Home</a></li><li><a href="/pricing">NavPricingLink</a></li>
      <li><a href="/about">NavAboutLink</a></li></ul></nav>
  <main><article>
    <h1>Heliostat Guide</h1>
    <p>{ARTICLE}</p>
    <p>See <a href="setup.html">the setup page</a>, <a href="/docs/faq.html">the FAQ</a>
       and <a href="../api/index.html?v=2#top">the API</a> for details on the heliostat array.</p>
    <p>{ARTICLE.replace("paragraph", "section")}</p>
  </article></main>
  <footer><p>FooterCopyrightNotice 2026 Example Corp. All rights reserved.</p></footer>
</body></html>"""


@pytest.fixture(scope="module")
def doc() -> Extracted:
    return extract_html(PAGE.encode(), URL)


def test_title(doc: Extracted) -> None:
    assert "Heliostat Guide" in doc.title


def test_links_are_absolute(doc: Extracted) -> None:
    assert "(http://example.test/docs/guide/setup.html)" in doc.markdown
    assert "(http://example.test/docs/faq.html)" in doc.markdown
    assert "(http://example.test/docs/api/index.html?v=2#top)" in doc.markdown
    assert "](/" not in doc.markdown and "](setup.html)" not in doc.markdown


def test_canonical_is_absolute(doc: Extracted) -> None:
    assert doc.canonical == "http://example.test/docs/guide/"


def test_main_content_without_boilerplate(doc: Extracted) -> None:
    assert "paragraph number 7 describing mirrors" in doc.markdown
    assert "section number 3" in doc.markdown
    for noise in ("NavPricingLink", "NavAboutLink", "FooterCopyrightNotice", "trackingSnippet", "color: red"):
        assert noise not in doc.markdown


def test_content_hash_tracks_title_and_text(doc: Extracted) -> None:
    again = extract_html(PAGE.encode(), URL)
    assert again.content_hash == doc.content_hash and len(doc.content_hash) == 64
    changed = extract_html(PAGE.replace("number 7", "number 70").encode(), URL)
    assert changed.content_hash != doc.content_hash
    retitled = Extracted(title="Other", markdown=doc.markdown)
    assert retitled.content_hash != doc.content_hash


def test_declared_encoding_is_honoured() -> None:
    html = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head><body><p>Cr\xe8me br\xfbl\xe9e au caf\xe9, servie ti\xe8de.</p></body></html>'
    doc = extract_html(html.encode("latin-1"), URL)
    assert "Crème brûlée" in doc.markdown


def test_utf16_with_bom_is_text_not_binary() -> None:
    html = "<html><head><title>Wide</title></head><body><p>Sixteen-bit text about sundials.</p></body></html>"
    doc = extract_html(html.encode("utf-16"), URL)
    assert "sundials" in doc.markdown


def test_page_without_main_markup_falls_back_to_text() -> None:
    doc = extract_html(b"<html><body><div>Only a tiny line.</div><script>no()</script></body></html>", URL)
    assert "Only a tiny line." in doc.markdown and "no()" not in doc.markdown


@pytest.mark.parametrize(
    "garbage",
    [b"", b"   \n  ", b"<!-- nothing but a comment -->", b"<html></html>", bytes(range(256)) * 8, b"\x00" * 100],
    ids=["empty", "blank", "comment", "no-body", "binary", "nul"],
)
def test_garbage_gives_an_empty_document(garbage: bytes) -> None:
    doc = extract_html(garbage, URL)
    assert doc == Extracted(title="", markdown="")


def test_plain_text_document() -> None:
    doc = extract_text_document("Line one   \r\n\r\n\r\n\r\nLine   two\t\tend", title="Notes")
    assert doc.title == "Notes"
    assert doc.markdown == "Line one\n\nLine two end"


def test_heading_permalinks_are_dropped() -> None:
    html = b"""<html><head><title>t</title></head><body><article>
    <h1>Regular expressions<a class="headerlink" href="#re" title="Permalink">\xc2\xb6</a></h1>
    <p>The <a href="#re.findall">findall</a> function returns all non-overlapping matches of the pattern in the string.</p>
    <h2 id="x">Flags <a href="#x" class="hash-link">#</a></h2>
    <p>Flags change how the pattern is interpreted; IGNORECASE makes matching case-insensitive everywhere.</p>
    </article></body></html>"""
    doc = extract_html(html, "https://docs.example/re.html")
    assert "\xb6" not in doc.markdown and "[#]" not in doc.markdown
    assert "Regular expressions" in doc.markdown and "findall" in doc.markdown  # ordinary links stay


def test_embedding_text_keeps_link_text_and_drops_urls() -> None:
    from indexer.extract import embedding_text

    md = 'See [`re.findall`](https://docs.python.org/3/library/re.html#re.findall "title") and ![logo](/img/a.png).'
    assert embedding_text(md) == "See `re.findall` and logo."
    assert embedding_text("a [b](http://x/(y)) c") == "a b c"
    assert embedding_text("no links [here] (at all)") == "no links [here] (at all)"


# --- encodings (WHATWG sniffing order: BOM, header charset, <meta>, UTF-8, windows-1252) ---------------
GERMAN_TITLE = "Übersicht über Größe und Maße"
GERMAN_TEXT = "Die Größe der Laterne beträgt dreißig Zentimeter; sie leuchtet über dem Fluss für 2 € die Stunde."


def german_page(head: str = "") -> str:
    return f"<html><head>{head}<title>{GERMAN_TITLE}</title></head><body><article><p>{GERMAN_TEXT}</p></article></body></html>"


@pytest.mark.parametrize("fast", [False, True], ids=["full", "fast"])
@pytest.mark.parametrize(
    ("encoding", "content_type"),
    [
        ("utf-8", "text/html; charset=utf-8"),  # header charset only, no <meta>
        ("utf-8", 'text/html; charset="UTF-8"'),
        ("utf-8", "text/html"),  # no charset anywhere: valid UTF-8 is UTF-8
        ("utf-8", None),
        ("cp1252", "text/html; charset=windows-1252"),
        ("cp1252", "text/html; charset=iso-8859-1"),  # browsers read latin-1 labels as windows-1252 (€, –)
        ("cp1252", "text/html"),  # no charset, not valid UTF-8: windows-1252
    ],
)
def test_charset_from_header_or_sniffed(encoding: str, content_type: str | None, fast: bool) -> None:
    doc = extract_html(german_page().encode(encoding), URL, content_type=content_type, fast=fast)
    assert doc.title == GERMAN_TITLE
    assert GERMAN_TEXT in doc.markdown


def test_header_charset_beats_meta_and_bom_beats_header() -> None:
    wrong_meta = german_page('<meta charset="iso-8859-1">').encode("utf-8")
    assert extract_html(wrong_meta, URL, content_type="text/html; charset=utf-8").title == GERMAN_TITLE
    meta = german_page('<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">').encode("cp1252")
    assert extract_html(meta, URL, content_type="text/html").title == GERMAN_TITLE
    bom = b"\xef\xbb\xbf" + german_page().encode("utf-8")
    assert extract_html(bom, URL, content_type="text/html; charset=iso-8859-1").title == GERMAN_TITLE


def test_xhtml_with_xml_declaration() -> None:
    page = '<?xml version="1.0" encoding="windows-1252"?>\n' + german_page()
    doc = extract_html(page.encode("cp1252"), URL, content_type="application/xhtml+xml")
    assert doc.title == GERMAN_TITLE and GERMAN_TEXT in doc.markdown


def test_plain_text_charset() -> None:
    from indexer.extract import decode_text

    assert decode_text(GERMAN_TEXT.encode("cp1252"), "text/plain; charset=iso-8859-1") == GERMAN_TEXT
    assert decode_text(GERMAN_TEXT.encode("utf-8"), "text/plain") == GERMAN_TEXT
    assert decode_text(GERMAN_TEXT.encode("cp1252"), "text/markdown") == GERMAN_TEXT  # not UTF-8: windows-1252
    assert decode_text(GERMAN_TEXT.encode("utf-16"), "text/plain; charset=utf-8") == GERMAN_TEXT  # BOM first
