"""Retrieval quality and latency on the Python documentation, per retrieval mode.

Serves Debian's ``python3.11-doc`` HTML (``/usr/share/doc/python3.11/html``; installed
with ``apt-get install -y python3.11-doc`` if missing) on 127.0.0.1 with a generated
sitemap, crawls and indexes it through the product (``python -m crawler.run`` in a temp
data dir: real spider, real pipeline, vectors + keyword index), then asks the questions
of ``shared/eval/retrieval/conala_dev.json`` whose gold targets are ``python.*``
(``python.library.re#re.findall`` → page ``library/re.html``, anchor ``re.findall``)
through ``POST /search`` of the real app (``create_app`` + ``TestClient``).

For each mode it reports Recall@1/5/10, MRR@10 and nDCG@10 at page level (the ranked
chunks mapped to their pages, first occurrence kept) and at anchor level (a chunk counts
for an anchor when it holds that anchor's section: the words of the anchor's signature
or heading appear in it, in order), plus p50/p95 latency of the ``/search`` call.

Usage::

    .venv/bin/python bench/retrieval.py                       # crawl + index + evaluate
    .venv/bin/python bench/retrieval.py --work-dir W --reuse  # keep / reuse the index in W
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (  # type: ignore[import-not-found]
    DEFAULT_MODELS_DIR,
    PYTHON_DOCS,
    REPO,
    bench_settings,
    copy_pages,
    create_instance,
    ensure_model,
    format_table,
    run_crawl,
    serve_site,
)

logger = logging.getLogger(__name__)

INSTANCE = "pydocs"
QUESTIONS = REPO.parent / "shared" / "eval" / "retrieval" / "conala_dev.json"
ACCOUNT = "/client/v4/accounts/local/ai-search"
TOKEN = "bench-token"
SKIP_PAGES = re.compile(r"^(genindex.*|search|py-modindex|contents)\.html$")  # index pages, not content
_WORDS = re.compile(r"\w+")
KS = (1, 5, 10)

MODES: dict[str, dict[str, Any]] = {
    "vector": {"retrieval": {"retrieval_type": "vector"}},
    "keyword (or)": {"retrieval": {"retrieval_type": "keyword", "keyword_match_mode": "or"}},
    "keyword (and)": {"retrieval": {"retrieval_type": "keyword", "keyword_match_mode": "and"}},
    "hybrid (rrf, or)": {"retrieval": {"retrieval_type": "hybrid", "fusion_method": "rrf", "keyword_match_mode": "or"}},
    "hybrid (rrf, or) + rerank": {"retrieval": {"retrieval_type": "hybrid", "fusion_method": "rrf",
                                                "keyword_match_mode": "or"}, "reranking": {"enabled": True}},
    "hybrid (max, or)": {"retrieval": {"retrieval_type": "hybrid", "fusion_method": "max", "keyword_match_mode": "or"}},
    "hybrid (rrf, and)": {"retrieval": {"retrieval_type": "hybrid", "fusion_method": "rrf", "keyword_match_mode": "and"}},
    "vector + rerank": {"retrieval": {"retrieval_type": "vector"}, "reranking": {"enabled": True}},
}
TRIGRAM_MODES = ("keyword (or)", "hybrid (rrf, or)", "hybrid (rrf, or) + rerank")


def ensure_docs() -> None:
    """Install Debian's python3.11-doc when its HTML is missing."""
    if PYTHON_DOCS.is_dir():
        return
    print("installing python3.11-doc ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "python3.11-doc"], check=True)


def load_questions() -> list[dict[str, Any]]:
    """Questions with ``python.*`` gold targets: ``{q, pages: set, anchors: set[(page, anchor)]}``."""
    out = []
    for row in json.loads(QUESTIONS.read_text()):
        targets = [t for t in row["oracle_man"] if t.startswith("python.")]
        if not targets:
            continue
        pages, anchors = set(), set()
        for t in targets:
            page, _, anchor = t.removeprefix("python.").partition("#")
            path = page.replace(".", "/", 1) + ".html"  # library.urllib.request → library/urllib.request.html
            pages.add(path)
            if anchor:
                anchors.add((path, anchor))
        out.append({"q": row["nl"], "pages": pages, "anchors": anchors})
    return out


def anchor_keys(site_root: Path, anchors: set[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """For each anchor, the word sequence that marks its section in a chunk.

    A ``<dt id=...>`` (functions, methods, classes): its signature's words; a section:
    its heading's words.  Signatures shorter than 3 words get the first words of their
    description added, so ``sum(iterable, /, start=0)`` is not matched by any "sum".
    """
    from lxml import html as lhtml

    keys: dict[tuple[str, str], list[str]] = {}
    trees: dict[str, Any] = {}
    for page, anchor in anchors:
        if page not in trees:
            path = site_root / page
            trees[page] = lhtml.parse(str(path)).getroot() if path.is_file() else None
        root = trees[page]
        if root is None:
            continue
        found = root.xpath("//*[@id=$a]", a=anchor)
        if not found:
            continue
        el = found[0]
        if el.tag in ("section", "div"):
            heads = el.xpath("./h1|./h2|./h3|./h4|./h5|./h6")
            words = _norm(heads[0].text_content()) if heads else _norm(el.text_content())[:8]
        else:
            words = _norm(el.text_content())
            dd = el.getnext()
            if len(words) < 4 and dd is not None and dd.tag == "dd":
                words += _norm(dd.text_content())[:6]
        if words:
            keys[(page, anchor)] = words[:24]
    return keys


def _norm(text: str) -> list[str]:
    return _WORDS.findall(text.replace("¶", " ").replace("\\", "").lower())


def holds(text: str, page: str, anchor: str, key: list[str]) -> bool:
    """Whether a chunk holds an anchor's section: its permalink (``[¶](.../page#anchor)``, which the
    extracted Markdown keeps right after the signature or heading) or the signature's words in order."""
    return f"{page}#{anchor})" in text or _contains(_norm(text), key)


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    first = needle[0]
    return any(haystack[i] == first and haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def metrics(ranked: list[set[Any]], gold: set[Any]) -> dict[str, float]:
    """Recall@1/5/10, MRR@10 and nDCG@10 of a ranking whose entries each hold a set of targets.

    Entries are deduplicated: a target counts at its first rank only.
    """
    seen: set[Any] = set()
    first_rank: dict[Any, int] = {}
    ranks: list[Any] = []  # per position: the new gold targets found there
    for pos, targets in enumerate(ranked):
        new = (targets & gold) - seen
        seen |= new
        for t in new:
            first_rank[t] = pos
        ranks.append(new)
    out = {f"R@{k}": len({t for t, r in first_rank.items() if r < k}) / len(gold) for k in KS}
    rr = [1.0 / (r + 1) for r in first_rank.values() if r < 10]
    out["MRR@10"] = max(rr, default=0.0)
    dcg = sum(len(new) / math.log2(pos + 2) for pos, new in enumerate(ranks[:10]))
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    out["nDCG@10"] = dcg / idcg if idcg else 0.0
    return out


def page_ranking(data: list[dict[str, Any]], base: str) -> list[set[str]]:
    """Distinct pages in the order of their first chunk."""
    pages: list[set[str]] = []
    seen: set[str] = set()
    for d in data:
        page = d["filename"].removeprefix(base).lstrip("/")
        if page not in seen:
            seen.add(page)
            pages.append({page})
    return pages


def anchor_ranking(data: list[dict[str, Any]], base: str, keys: dict[tuple[str, str], list[str]],
                   gold: set[tuple[str, str]]) -> list[set[tuple[str, str]]]:
    """Per chunk, the gold anchors whose section it holds."""
    out = []
    for d in data:
        page = d["filename"].removeprefix(base).lstrip("/")
        text = " ".join(c["text"] for c in d["content"])
        out.append({a for a in gold if a[0] == page and a in keys and holds(text, a[0], a[1], keys[a])})
    return out


def evaluate(client: Any, questions: list[dict[str, Any]], keys: dict[tuple[str, str], list[str]], base: str,
             options: dict[str, Any]) -> dict[str, float]:
    """Mean metrics and latency percentiles of one mode over all questions."""
    page_m: list[dict[str, float]] = []
    anchor_m: list[dict[str, float]] = []
    lat: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for q in questions:
        body = {"query": q["q"], "max_num_results": 50, "ai_search_options": options}
        t = time.perf_counter()
        r = client.post(f"{ACCOUNT}/instances/{INSTANCE}/search", json=body, headers=headers)
        lat.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"/search failed: {r.status_code} {r.text[:300]}")
        data = r.json()["result"]["data"]
        page_m.append(metrics(page_ranking(data, base), q["pages"]))
        gold_anchors = {a for a in q["anchors"] if a in keys}
        if gold_anchors:
            anchor_m.append(metrics(anchor_ranking(data[:10], base, keys, gold_anchors), gold_anchors))
    out: dict[str, float] = {}
    for prefix, rows in (("page", page_m), ("anchor", anchor_m)):
        for name in rows[0]:
            out[f"{prefix} {name}"] = statistics.fmean(r[name] for r in rows)
    lat.sort()
    out["p50 ms"] = lat[len(lat) // 2]
    out["p95 ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the site copy and data dir here")
    parser.add_argument("--reuse", action="store_true", help="reuse an index already in --work-dir")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="cache of the built model")
    parser.add_argument("--no-trigram", action="store_true", help="skip the trigram-tokenizer rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    ensure_docs()
    model_dir = ensure_model(args.models_dir)
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        work = args.work_dir or Path(tmp)
        site_root = work / "site"
        data_dir = work / "data"
        if not args.reuse:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(site_root, ignore_errors=True)
        site_root.mkdir(parents=True, exist_ok=True)
        pages = [p for p in copy_pages(PYTHON_DOCS, site_root) if not SKIP_PAGES.match(p)]
        questions = load_questions()
        with serve_site(site_root, pages, port=0) as site:
            settings = bench_settings(data_dir, model_dir, api_token=TOKEN)
            built = (data_dir / "state.db").exists() and args.reuse
            crawl_s = None
            if not built:
                create_instance(settings, INSTANCE, site.url)
                print(f"crawling and indexing {len(pages)} pages from {site.url} ...", file=sys.stderr)
                t = time.monotonic()
                run = run_crawl(settings, INSTANCE, own_index=True)
                crawl_s = time.monotonic() - t
                print(f"indexed: {run.items} in {crawl_s:.0f} s", file=sys.stderr)
            results = _evaluate_all(settings, questions, site_root, args)
    base = _base_url(settings)
    print(_report(results, questions, crawl_s, base))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _base_url(settings: Any) -> str:
    from indexer.state import StateStore

    state = StateStore(settings.resolved_database_url)
    try:
        inst = state.get_instance(INSTANCE)
        return (inst or {}).get("source", "").rstrip("/")
    finally:
        state.close()


def _evaluate_all(settings: Any, questions: list[dict[str, Any]], site_root: Path, args: Any) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from server.app import create_app

    base = _base_url(settings)
    gold = {a for q in questions for a in q["anchors"]}
    keys = anchor_keys(site_root, gold)
    results: dict[str, Any] = {"_meta": {"questions": len(questions), "anchors": len(gold), "anchors_located": len(keys)}}
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service if hasattr(client.app.state, "service") else None
        if service is not None:
            results["_meta"]["chunks"] = service.vectors.count(INSTANCE)
            results["_meta"]["keyword_rows"] = service.vectors.keywords.count(INSTANCE)
            results["_meta"]["anchors_in_index"] = _anchors_in_index(service, keys, base)
        for label, options in MODES.items():
            print(f"evaluating {label} ...", file=sys.stderr)
            results[label] = evaluate(client, questions, keys, base, options)
        if not args.no_trigram and service is not None:
            kw = service.vectors.keywords
            t = time.monotonic()
            with kw._write_lock:  # bench-only: rebuild the FTS table with the other tokenizer
                conn = kw._conn(INSTANCE)
                kw._ensure_fts(conn, INSTANCE, "trigram")
            results["_meta"]["trigram_rebuild_s"] = time.monotonic() - t
            for label in TRIGRAM_MODES:
                print(f"evaluating {label} [trigram] ...", file=sys.stderr)
                results[f"{label} [trigram]"] = evaluate(client, questions, keys, base, MODES[label])
            with kw._write_lock:
                kw._ensure_fts(kw._conn(INSTANCE), INSTANCE, "porter")
    return results


def _anchors_in_index(service: Any, keys: dict[tuple[str, str], list[str]], base: str) -> int:
    """How many gold anchors some stored chunk holds (the ceiling of anchor recall)."""
    col = service.vectors._collection(INSTANCE)  # bench-only peek at the store
    got = col.get(include=["documents", "metadatas"])
    by_page: dict[str, list[str]] = {}
    for doc, meta in zip(got["documents"], got["metadatas"], strict=True):
        page = str(meta.get("filename", "")).removeprefix(base).lstrip("/")
        by_page.setdefault(page, []).append(doc or "")
    return sum(any(holds(t, page, anchor, key) for t in by_page.get(page, [])) for (page, anchor), key in keys.items())


def _report(results: dict[str, Any], questions: list[dict[str, Any]], crawl_s: float | None, base: str) -> str:
    meta = results["_meta"]
    cols = ["page R@1", "page R@5", "page R@10", "page MRR@10", "page nDCG@10",
            "anchor R@1", "anchor R@5", "anchor R@10", "anchor MRR@10", "anchor nDCG@10", "p50 ms", "p95 ms"]
    rows = [[label] + [round(r[c], 3) if "ms" not in c else round(r[c], 1) for c in cols]
            for label, r in results.items() if label != "_meta"]
    head = (
        f"{meta['questions']} questions with python.* targets; {meta['anchors']} gold anchors, "
        f"{meta['anchors_located']} located in the HTML, {meta.get('anchors_in_index', '?')} held by some stored chunk; "
        f"{meta.get('chunks', '?')} chunks ({meta.get('keyword_rows', '?')} keyword rows)"
        + (f"; crawl+index {crawl_s:.0f} s" if crawl_s else "")
        + (f"; trigram rebuild {meta['trigram_rebuild_s']:.1f} s" if "trigram_rebuild_s" in meta else "")
    )
    return head + "\n" + format_table(["mode"] + cols, rows)


if __name__ == "__main__":
    sys.exit(main())
