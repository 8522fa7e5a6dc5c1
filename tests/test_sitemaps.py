"""Tests for crawler.sitemaps: forms, limits, hostile input, streaming."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import re
import socket
import sys
import time
import tracemalloc
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest

from crawler.sitemaps import (
    MAX_INDEX_DEPTH,
    MAX_REPORTED_ERRORS,
    MAX_SITEMAP_BYTES,
    MAX_URLS_PER_SITEMAP,
    MAX_XML_ERRORS,
    ParseReport,
    SitemapEntry,
    SitemapWalk,
    is_gzip,
    iter_sitemap,
    parse_lastmod,
    resolve_sitemap_url,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sitemaps"
EVAL_CASES = Path(__file__).resolve().parents[2] / "shared/eval/sitemaps/scrapy_sitemap_cases.json"
BASE = "https://example.com/dir/sitemap.xml"


def _load_eval_cases() -> list:
    if not EVAL_CASES.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{EVAL_CASES} not found"))]
    cases = json.loads(EVAL_CASES.read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["test"].split("::")[-1] + f"-{i}") for i, case in enumerate(cases)]


def parse(body: bytes | str, base_url: str = BASE, **kwargs) -> tuple[list[SitemapEntry], ParseReport]:
    if isinstance(body, str):
        body = body.encode("utf-8")
    report = ParseReport()
    entries = list(iter_sitemap(body, base_url=base_url, report=report, **kwargs))
    return entries, report


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def locs(entries: list[SitemapEntry]) -> list[str]:
    return [entry.loc for entry in entries]


def urlset(n: int, start: int = 0, extra: str = "") -> bytes:
    rows = "".join(
        f"<url><loc>https://example.com/p/{i}</loc><lastmod>2024-01-01</lastmod>{extra}</url>\n"
        for i in range(start, start + n)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
        'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">\n'
        f"{rows}</urlset>\n"
    ).encode()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- shared eval cases


@pytest.mark.parametrize("case", _load_eval_cases())
def test_scrapy_eval_cases(case: dict) -> None:
    if case["kind"] == "robots_sitemap_lines":
        refs = re.findall(r"(?im)^\s*sitemap:\s*(\S+)", case["body"])
        resolved = [resolve_sitemap_url(ref, case["base_url"]) for ref in refs]
        assert resolved == case["sitemaps"]
        return
    assert case["kind"] == "sitemap_xml"
    entries, report = parse(case["body"], base_url="http://www.example.com/sitemap.xml")
    expected_format = case["type"] if case["type"] in ("urlset", "sitemapindex") else "unknown"
    assert report.format == expected_format
    expected_kind = "sitemap" if case["type"] == "sitemapindex" else "url"
    assert locs(entries) == [item["loc"] for item in case["items"]]
    for entry, item in zip(entries, case["items"]):
        assert entry.kind == expected_kind
        assert entry.lastmod == (item.get("lastmod") or None)
        assert entry.changefreq == item.get("changefreq")
        assert entry.priority == (float(item["priority"]) if "priority" in item else None)
    # alternates are opt-in
    alternates = [alt for item in case["items"] for alt in item.get("alternate", [])]
    if alternates:
        with_alternates, _ = parse(case["body"], include_alternates=True)
        expected = list(dict.fromkeys([case["items"][0]["loc"], *alternates]))
        assert locs(with_alternates) == expected
    # nothing from an entity ever reaches a loc
    for entry in entries:
        assert "&" not in entry.loc and "root:" not in entry.loc


# --------------------------------------------------------------------------- forms


def test_urlset_fields_extensions_cdata_whitespace() -> None:
    entries, report = parse(fixture("urlset_extensions.xml"))
    assert report.format == "urlset"
    assert locs(entries) == [
        "https://example.com/en/",
        "https://example.com/search?q=a&b=2",  # CDATA with a raw '&', whitespace trimmed
        "https://example.com/news?id=1&lang=en&page=2",  # &amp; plus a bare '&'
    ]
    first, second, third = entries
    assert first == SitemapEntry("https://example.com/en/", "url", "2024-03-01T12:30:00+02:00", "daily", 1.0)
    assert (second.changefreq, second.priority, second.lastmod) == (None, None, None)
    assert third.priority == 0.0  # clamped from -0.3
    # image:loc / video:player_loc are not pages
    assert not any("cdn.example.com" in loc or "player" in loc for loc in locs(entries))
    assert report.urls == 3 and report.sitemaps == 0
    assert any("without a valid http(s) loc" in error for error in report.errors)  # no loc, javascript:
    assert any("unescaped '&'" in error for error in report.errors)


def test_alternates_flag() -> None:
    without, _ = parse(fixture("urlset_extensions.xml"))
    with_alt, report = parse(fixture("urlset_extensions.xml"), include_alternates=True)
    assert locs(with_alt)[:3] == ["https://example.com/en/", "https://example.com/de/", "https://example.com/fr/"]
    assert len(with_alt) == len(without) + 2  # the self-referencing hreflang=en is not repeated
    assert with_alt[1] == SitemapEntry("https://example.com/de/", "url", None, None, None)
    assert report.urls == 5


def test_sitemapindex_and_relative_children() -> None:
    entries, report = parse(fixture("sitemapindex.xml"))
    assert report.format == "sitemapindex"
    assert report.sitemaps == 4 and report.urls == 0
    assert all(entry.kind == "sitemap" for entry in entries)
    assert locs(entries) == [
        "https://example.com/sitemap-pages.xml",
        "https://example.com/sitemap-posts.xml.gz",
        "https://example.com/dir/sitemap-relative.xml",
        "https://cdn.example.com/sitemap-cdn.xml",
    ]
    assert entries[0].lastmod == "2024-02-01T00:00:00Z"


@pytest.mark.parametrize("name", ["old_namespace_084.xml", "wrong_namespace.xml"])
def test_namespaces_matched_on_local_names(name: str) -> None:
    entries, report = parse(fixture(name))
    assert report.format == "urlset"
    assert entries and all(entry.loc.startswith("http://www.example.com/") for entry in entries)
    assert report.errors == []


def test_relative_and_partial_urls() -> None:
    entries, _ = parse(fixture("relative_urls.xml"))
    assert locs(entries) == [
        "https://example.com/absolute-path",
        "https://example.com/dir/relative-page",
        "https://example.com/up-one",
        "https://other.example.com/partial",
        "https://example.com/dir/sitemap.xml?query=only",
        "https://Example.com/Upper",
    ]


def test_text_sitemap() -> None:
    entries, report = parse(fixture("text_sitemap.txt"), base_url="https://example.com/sitemap.txt")
    assert report.format == "text"
    assert locs(entries) == [
        "https://example.com/",
        "https://example.com/about",
        "https://example.com/contact",
        "https://example.com/relative/path",
        "https://example.com/last",
    ]
    _, report = parse(b"just some words\nand more\n")
    assert report.urls == 0 and any(error.startswith("text: no URLs found") for error in report.errors)


def test_text_sitemap_overlong_line_dropped() -> None:
    body = b"https://example.com/a\n" + b"https://example.com/" + b"x" * 200_000 + b"\nhttps://example.com/b\n"
    entries, _ = parse(body)
    assert locs(entries) == ["https://example.com/a", "https://example.com/b"]


def test_rss_feed() -> None:
    entries, report = parse(fixture("rss.xml"), base_url="https://example.com/feed.xml")
    assert report.format == "rss"
    assert locs(entries) == [
        "https://example.com/posts/first",
        "https://example.com/posts/second",
        "https://example.com/posts/guid",
    ]
    assert entries[0].lastmod == "Tue, 05 Mar 2024 10:00:00 +0100"
    assert parse_lastmod(entries[0].lastmod) == datetime(2024, 3, 5, 9, 0, tzinfo=timezone.utc)
    assert entries[1].lastmod == "2024-03-06T08:00:00Z"  # dc:date fallback
    assert "https://example.com/feed.xml" not in locs(entries)  # channel atom:link rel=self


def test_atom_feed() -> None:
    entries, report = parse(fixture("atom.xml"), base_url="https://example.com/atom.xml")
    assert report.format == "atom"
    assert locs(entries) == ["https://example.com/one", "https://example.com/two"]
    assert entries[0].lastmod == "2024-03-07T09:00:00Z"
    assert entries[1].lastmod == "2024-03-01"  # published fallback


@pytest.mark.parametrize("name", ["bom_utf8.xml", "bom_text.txt"])
def test_utf8_bom(name: str) -> None:
    entries, report = parse(fixture(name))
    assert entries and all("\ufeff" not in entry.loc for entry in entries)
    assert report.errors == []


def test_declared_latin1_and_utf16() -> None:
    entries, _ = parse(fixture("latin1.xml"))
    assert locs(entries) == ["https://example.com/caf\u00e9"]
    body = '<?xml version="1.0" encoding="UTF-16"?><urlset><url><loc>https://example.com/\u00fc</loc></url></urlset>'
    entries, _ = parse(body.encode("utf-16"))
    assert locs(entries) == ["https://example.com/\u00fc"]


def test_invalid_utf8_and_control_chars_are_repaired() -> None:
    body = b"<urlset><url><loc>https://example.com/a\xff</loc></url><url><loc>https://example.com/b\x01</loc></url></urlset>"
    entries, report = parse(body)
    assert locs(entries) == ["https://example.com/a\ufffd", "https://example.com/b"]
    assert any(error.startswith("encoding:") for error in report.errors)
    assert any("not allowed in XML" in error for error in report.errors)


def test_leading_blank_lines_and_html_soft_404() -> None:
    entries, report = parse(b"\n\n  " + urlset(2))
    assert len(entries) == 2 and report.errors == []
    entries, report = parse(fixture("soft404.html"))
    assert entries == [] and report.format == "unknown"
    assert report.errors == ["not a sitemap: root element <html>"]


def test_empty_body() -> None:
    entries, report = parse(b"")
    assert entries == [] and report.errors == ["empty sitemap"]


# --------------------------------------------------------------------------- gzip


def test_gzip_detected_by_magic_not_name() -> None:
    body = gzip.compress(fixture("sitemapindex.xml"))
    assert is_gzip(body) and not is_gzip(b"<urlset/>") and not is_gzip(b"")
    for base in ("https://example.com/dir/sitemap.xml", "https://example.com/dir/s.php?x=1"):
        entries, report = parse(body, base_url=base)
        assert report.sitemaps == 4 and report.errors == []
    # a plain body named .gz is still plain
    entries, _ = parse(fixture("sitemapindex.xml"), base_url="https://example.com/dir/sitemap.xml.gz")
    assert len(entries) == 4


def test_gzip_multi_member_and_trailing_padding() -> None:
    text = fixture("text_sitemap.txt") + b"\n"
    body = gzip.compress(text[:40]) + gzip.compress(text[40:]) + b"\0" * 16
    entries, report = parse(body, base_url="https://example.com/sitemap.txt")
    assert len(entries) == 5 and report.errors == []


def test_gzip_corrupt_and_truncated_keep_parsed_entries() -> None:
    body = gzip.compress(urlset(2000))
    entries, report = parse(body[: len(body) // 2])
    assert 0 < len(entries) < 2000
    assert "gzip: truncated stream; stopped" in report.errors
    assert not any(error.startswith("XML error") for error in report.errors)
    corrupt = bytearray(body)
    corrupt[-8] ^= 0xFF  # CRC
    entries, report = parse(bytes(corrupt))
    assert len(entries) == 2000  # the data was fine; only the checksum is wrong
    assert report.errors == ["gzip: CRC or length check failed; stopped"]
    corrupt = bytearray(body)
    corrupt[len(body) // 2] ^= 0xFF  # inside the deflate stream
    entries, report = parse(bytes(corrupt))  # garbage may come out before the CRC says so
    assert any(error.startswith(("gzip:", "XML")) for error in report.errors)
    header_with_name = gzip.compress(b"x")[:3] + b"\x08" + bytes(6) + b"sitemap.xml\0"
    entries, report = parse(header_with_name + zlib.compress(urlset(3))[2:-4] + gzip.compress(urlset(3))[-8:])
    assert len(entries) == 3 and report.errors == []


def test_gzip_bomb_stops_at_cap_fast_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    member = gzip.compress(bytes(64 << 20), compresslevel=9)  # 64 MiB of zeros -> ~64 KiB
    bomb = member * 16  # 1 GiB decompressed in ~1 MiB
    assert len(bomb) < 2 << 20
    cap = 1 << 20
    tracemalloc.start()
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="crawler.sitemaps"):
        entries, report = parse(bomb, max_bytes=cap)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert entries == []
    assert report.errors[0] == f"gzip: decompressed size exceeds {cap} bytes; stopped"
    assert elapsed < 2.0
    assert peak < 8 << 20
    assert any("decompressed size exceeds" in record.getMessage() for record in caplog.records)


def test_gzip_cap_keeps_entries_parsed_before_it() -> None:
    body = urlset(5000)
    cap = len(body) // 2
    entries, report = parse(gzip.compress(body), max_bytes=cap)
    assert 2000 < len(entries) < 2600
    assert locs(entries) == [f"https://example.com/p/{i}" for i in range(len(entries))]
    assert report.errors == [f"gzip: decompressed size exceeds {cap} bytes; stopped"]
    # same cap on a plain body
    entries, report = parse(body, max_bytes=cap)
    assert 2000 < len(entries) < 2600
    assert report.errors == [f"size exceeds {cap} bytes; stopped"]


# --------------------------------------------------------------------------- hostile XML


def test_billion_laughs_does_nothing() -> None:
    started = time.perf_counter()
    entries, report = parse(fixture("billion_laughs.xml"))
    assert time.perf_counter() - started < 1.0
    assert locs(entries) == ["http://example.com/", "http://example.com/after"]
    assert all("lol" not in entry.loc and entry.lastmod is None for entry in entries)
    assert any("entity references not expanded" in error for error in report.errors)


def test_parameter_entity_bomb_does_nothing() -> None:
    body = (
        '<?xml version="1.0"?><!DOCTYPE urlset ['
        '<!ENTITY % a "aaaaaaaaaa"><!ENTITY % b "%a;%a;%a;%a;%a;%a;%a;%a;%a;%a;">'
        '<!ENTITY % c "%b;%b;%b;%b;%b;%b;%b;%b;%b;%b;"><!ENTITY % d "%c;%c;%c;%c;%c;%c;%c;%c;%c;%c;">'
        '<!ENTITY e "%d;%d;%d;%d;%d;%d;%d;%d;%d;%d;">]>'
        "<urlset><url><loc>http://example.com/&e;</loc></url><url><loc>http://example.com/2</loc></url></urlset>"
    )
    started = time.perf_counter()
    entries, report = parse(body)
    assert time.perf_counter() - started < 1.0
    assert all("aaa" not in entry.loc for entry in entries)
    # parameter entities inside declarations are not well-formed: reported, nothing expanded
    assert any(error.startswith("XML error at line 1: PEReferences forbidden") for error in report.errors)


def test_external_entity_etc_passwd_not_read() -> None:
    entries, report = parse(fixture("xxe_file.xml"))
    assert locs(entries) == ["http://example.com/"]
    assert entries[0].lastmod is None
    assert not any("root:" in text for text in (*locs(entries), *report.errors))


def test_external_entities_and_dtds_never_loaded(tmp_path: Path) -> None:
    secret = "S3CRET-MARKER-7f1c"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    dtd_file = tmp_path / "evil.dtd"
    dtd_file.write_text(f'<!ENTITY leak "{secret}">')
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    uri = secret_file.as_uri()
    bodies = [
        f'<!DOCTYPE urlset [<!ENTITY x SYSTEM "{uri}">]><urlset><url><loc>http://e.com/&x;</loc></url></urlset>',
        f'<!DOCTYPE urlset [<!ENTITY % p SYSTEM "{dtd_file.as_uri()}"> %p;]>'
        "<urlset><url><loc>http://e.com/&leak;</loc></url></urlset>",
        f'<!DOCTYPE urlset SYSTEM "{dtd_file.as_uri()}"><urlset><url><loc>http://e.com/&leak;</loc></url></urlset>',
        f'<!DOCTYPE urlset SYSTEM "http://127.0.0.1:{port}/x.dtd">'
        f'<urlset><url><loc>http://e.com/a</loc></url></urlset>',
        f'<!DOCTYPE urlset [<!ENTITY n SYSTEM "http://127.0.0.1:{port}/e">]>'
        "<urlset><url><loc>http://e.com/&n;</loc></url></urlset>",
        f'<urlset xmlns:xi="http://www.w3.org/2001/XInclude"><url><loc>http://e.com/b</loc>'
        f'<xi:include href="{uri}" parse="text"/></url></urlset>',
    ]
    try:
        for body in bodies:
            entries, report = parse(body)
            assert len(entries) == 1
            everything = json.dumps([[*map(str, (e.loc, e.lastmod))] for e in entries] + report.errors)
            assert secret not in everything
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()


def test_truncated_xml_keeps_entries_and_reports() -> None:
    entries, report = parse(fixture("truncated.xml"))
    assert locs(entries) == ["https://example.com/1", "https://example.com/2"]
    assert entries[0].lastmod == "2024-01-01"
    assert len(report.errors) == 1 and report.errors[0].startswith("XML error at line 5: Premature end")


def test_every_truncation_point_is_safe() -> None:
    """Cut a fixture at every byte: never raises, never invents a URL (e.g. a half loc)."""
    for name in ("urlset_extensions.xml", "rss.xml", "atom.xml", "sitemapindex.xml"):
        body = fixture(name)
        full = set(locs(parse(body, include_alternates=True)[0]))
        for cut in range(len(body)):
            entries, _ = parse(body[:cut], include_alternates=True)
            assert set(locs(entries)) <= full, (name, cut)


def test_malformed_middle_resyncs_at_next_entry() -> None:
    entries, report = parse(fixture("malformed_middle.xml"))
    assert locs(entries) == [f"https://example.com/{i}" for i in (1, 2, 3, 4)]
    assert report.errors == ["XML error at line 5: Opening and ending tag mismatch: loc line 5 and lox"]


def test_malformed_single_line_document_resyncs_by_column() -> None:
    good = b"".join(b"<url><loc>https://example.com/%d</loc></url>" % i for i in range(20_000))
    body = b"<urlset>" + good + b"<url><loc>https://example.com/bad</lox></url>" + good.replace(b".com/", b".com/b") + b"</urlset>"
    entries, report = parse(body)
    assert len(entries) == 40_000
    assert len(set(locs(entries))) == 40_000
    assert "https://example.com/bad" not in locs(entries)
    assert len(report.errors) == 1 and report.errors[0].startswith("XML error at line 1:")


def test_unclosed_entry_and_concatenated_documents() -> None:
    body = b"<urlset><url><loc>http://e.com/1</loc><url><loc>http://e.com/2</loc></url><url><loc>http://e.com/3</loc></url></urlset>"
    entries, _ = parse(body)
    assert locs(entries) == ["http://e.com/1", "http://e.com/2", "http://e.com/3"]
    body = urlset(2) + urlset(2, start=2)
    entries, report = parse(body)
    assert locs(entries) == [f"https://example.com/p/{i}" for i in range(4)]
    assert len(report.errors) == 1


def test_too_many_errors_stop() -> None:
    rows = "".join(f"<url><loc>http://e.com/{i}</lox></url><url><loc>http://e.com/ok{i}</loc></url>" for i in range(300))
    entries, report = parse(f"<urlset>{rows}</urlset>")
    assert MAX_XML_ERRORS - 5 <= len(entries) < 300  # each error costs only the broken entry
    assert f"XML: too many errors ({MAX_XML_ERRORS}); stopped" in report.errors
    assert report.errors[-1] == f"{MAX_XML_ERRORS - MAX_REPORTED_ERRORS} further errors not listed"
    assert len(report.errors) < MAX_REPORTED_ERRORS + 5


@pytest.mark.parametrize(
    "body",
    [
        b"<url>&k;",
        b"<",
        b"<?xml",
        b"\x00\x01\x02",
        b"<urlset><url><loc>",
        b"<urlset xmlns:a='x'><a:url><a:loc>http://e.com/</a:loc></a:url>" + b"<x>" * 1000,
        b"\x1f\x8b\x08\x00garbage",
        b"\xff\xfe<\x00u\x00",
        "<urlset><url><loc>http://e.com/\ud800</loc></url></urlset>".encode("utf-8", "surrogatepass"),
        b"<urlset><url><loc>http://[::1/</loc></url><url><loc>http://e.com:99999999/</loc></url></urlset>",
        b'<?xml version="1.0" encoding="zlib"?><urlset/>',
        b'<?xml version="1.0" encoding="unicode_escape"?><urlset/>',
        b"<urlset>" + b"<url><loc>http://e.com/" + b"a" * 5000 + b"</loc></url></urlset>",
    ],
)
def test_never_raises(body: bytes) -> None:
    entries, report = parse(body)
    assert isinstance(report.errors, list)
    assert all(entry.loc.startswith(("http://", "https://")) for entry in entries)
    assert all(len(entry.loc) <= 2048 for entry in entries)


# --------------------------------------------------------------------------- limits and streaming


def test_url_limit_counts_skipped() -> None:
    entries, report = parse(urlset(60_000))
    assert len(entries) == MAX_URLS_PER_SITEMAP == report.urls
    assert report.skipped_over_limit == 10_000
    assert report.errors == ["limit: more than 50000 entries; 10000 skipped"]
    entries, report = parse(urlset(10), max_urls=3)
    assert len(entries) == 3 and report.skipped_over_limit == 7


def test_streaming_first_entry_before_document_parsed() -> None:
    body = urlset(60_000)
    report = ParseReport()
    started = time.perf_counter()
    stream = iter_sitemap(body, base_url=BASE, report=report)
    first = next(stream)
    first_after = time.perf_counter() - started
    assert first.loc == "https://example.com/p/0"
    assert report.urls == 1  # the report grows with the stream: nothing else parsed yet
    head = list(itertools.islice(stream, 99))
    assert report.urls == 100 and head[-1].loc == "https://example.com/p/99"
    rest = sum(1 for _ in stream)
    total = time.perf_counter() - started
    assert rest == MAX_URLS_PER_SITEMAP - 100
    assert first_after < total / 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_memory_bounded_while_streaming() -> None:
    caption = "<image:image><image:caption>" + "x" * 400 + "</image:caption></image:image>"
    body = urlset(60_000, extra=caption)  # ~33 MB: the whole tree would take ~100 MB
    stream = iter_sitemap(body, base_url=BASE)
    for _ in itertools.islice(stream, 5000):
        pass
    before = rss_bytes()
    count = 5000 + sum(1 for _ in stream)
    growth = rss_bytes() - before
    assert count == MAX_URLS_PER_SITEMAP
    assert growth < 20 << 20, f"RSS grew {growth / 1e6:.1f} MB while streaming"


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2005-01-01", datetime(2005, 1, 1, tzinfo=timezone.utc)),
        ("2004-10-01T18:23:17+00:00", datetime(2004, 10, 1, 18, 23, 17, tzinfo=timezone.utc)),
        ("2004-10-01T18:23:17+02:00", datetime(2004, 10, 1, 16, 23, 17, tzinfo=timezone.utc)),
        ("2004-10-01T18:23Z", datetime(2004, 10, 1, 18, 23, tzinfo=timezone.utc)),
        ("2004-10-01T18:23:17.123456789-0130", datetime(2004, 10, 1, 19, 53, 17, 123456, tzinfo=timezone.utc)),
        ("2004-10-01 18:23:17", datetime(2004, 10, 1, 18, 23, 17, tzinfo=timezone.utc)),
        ("2004", datetime(2004, 1, 1, tzinfo=timezone.utc)),
        ("2004-10", datetime(2004, 10, 1, tzinfo=timezone.utc)),
        (" 2024-03-02 ", datetime(2024, 3, 2, tzinfo=timezone.utc)),
        ("Sat, 07 Sep 2002 00:00:01 GMT", datetime(2002, 9, 7, 0, 0, 1, tzinfo=timezone.utc)),
        ("Tue, 05 Mar 2024 10:00:00 +0100", datetime(2024, 3, 5, 9, 0, tzinfo=timezone.utc)),
        ("05 Mar 2024 10:00:00 -0000", datetime(2024, 3, 5, 10, 0, tzinfo=timezone.utc)),
        ("2004-13-01", None),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_lastmod(value: str | None, expected: datetime | None) -> None:
    parsed = parse_lastmod(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is timezone.utc


@pytest.mark.parametrize(
    ("ref", "base", "expected"),
    [
        ("http://example.com/sitemap.xml", "http://example.com", "http://example.com/sitemap.xml"),
        ("HTTP://example.com/sitemap-uppercase.xml", "http://example.com", "http://example.com/sitemap-uppercase.xml"),
        ("/sitemap-relative-url.xml", "http://example.com", "http://example.com/sitemap-relative-url.xml"),
        ("sitemap.xml", "https://example.com/robots.txt", "https://example.com/sitemap.xml"),
        ("//cdn.example.com/s.xml", "https://example.com/robots.txt", "https://cdn.example.com/s.xml"),
        ("  https://example.com/s.xml  ", "", "https://example.com/s.xml"),
        ("ftp://example.com/s.xml", "https://example.com/", None),
        ("", "https://example.com/", None),
        ("/relative", "", None),
        ("http:///nohost", "", None),
    ],
)
def test_resolve_sitemap_url(ref: str, base: str, expected: str | None) -> None:
    assert resolve_sitemap_url(ref, base) == expected


def test_sitemap_walk_cycles_and_depth() -> None:
    walk = SitemapWalk()
    assert walk.should_fetch("https://example.com/sitemap.xml", 0) is None
    assert walk.should_fetch("https://example.com/sitemap.xml", 1) == "cycle: already fetched"
    assert walk.should_fetch("HTTPS://EXAMPLE.com/sitemap.xml#frag", 2) == "cycle: already fetched"
    assert walk.should_fetch("https://example.com/Sitemap.xml", 1) is None  # paths are case-sensitive
    assert walk.should_fetch("https://example.com/deep.xml", MAX_INDEX_DEPTH) is None
    assert walk.should_fetch("https://example.com/deeper.xml", 11) == "depth 11 exceeds 10"
    assert walk.should_fetch("https://example.com/deeper.xml", 1) is None  # refused ones are not marked
    assert walk.should_fetch("not a url", 0) == "invalid URL"
    assert len(walk) == 4 and "https://example.com/deep.xml" in walk
    small = SitemapWalk(max_depth=2, max_sitemaps=1)
    assert small.should_fetch("https://e.com/a", 3) == "depth 3 exceeds 2"
    assert small.should_fetch("https://e.com/a", 0) is None
    assert small.should_fetch("https://e.com/b", 0) == "limit: 1 sitemaps already fetched"


def test_constants_and_entry_type() -> None:
    assert MAX_SITEMAP_BYTES == 50 * 1024 * 1024
    entry = SitemapEntry("https://e.com/", "url", None, None, None)
    with pytest.raises(AttributeError):
        entry.loc = "x"  # type: ignore[misc]
    assert not hasattr(entry, "__dict__")
