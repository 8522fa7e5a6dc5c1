"""Crawl-and-index throughput on the Python documentation, with in-run baselines.

Serves Debian's ``python3.11-doc`` HTML (``/usr/share/doc/python3.11/html``, 530 pages;
``apt-get install -y python3.11-doc``) on 127.0.0.1 with a generated sitemap, then:

1. fetch-only crawl: ``python -m crawler.run`` while this process holds the embedded
   store's lock, so the crawler does not own the index and extracts/embeds nothing
   (pages stay ``fetched``);
2. full pipeline: the same crawl in a fresh data dir, where the crawler owns the store
   and indexes inline (fetch → trafilatura → chunk → embed → Chroma);
3. embedder overhead: ``Embedder.embed`` against bare ``onnxruntime.InferenceSession.run``
   of the same ``model.onnx`` on the same tokenized batches (chunks taken from step 2's
   store, embedded as the pipeline embeds them).

Prints one table; ratios are against baselines measured in the same run.
Installs nothing, downloads nothing.

Usage::

    .venv/bin/python bench/crawl_index.py            # all 530 pages (several minutes)
    .venv/bin/python bench/crawl_index.py --limit 40 # quick subset
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import (  # type: ignore[import-not-found]
    DEFAULT_MODELS_DIR,
    PYTHON_DOCS,
    CrawlRun,
    bench_settings,
    copy_pages,
    create_instance,
    ensure_model,
    format_table,
    run_crawl,
    serve_site,
)

from indexer.config import Settings
from indexer.embedder import Embedder
from indexer.vectorstore import VectorStore

logger = logging.getLogger(__name__)

INSTANCE = "pydocs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="crawl only the first N pages (sorted by path)")
    parser.add_argument("--source", type=Path, default=PYTHON_DOCS, help="directory of HTML pages to serve")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="cache of the built model")
    parser.add_argument("--model-dir", type=Path, default=None, help="an ONNX model directory (default: built-in)")
    parser.add_argument("--embed-sample", type=int, default=256, help="chunks used for the embedder ratio")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds for the embedder ratio")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep site copy and data dirs here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    model_dir = args.model_dir or ensure_model(args.models_dir)
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp:
        work = args.work_dir or Path(tmp)
        site_root = work / "site"
        site_root.mkdir(parents=True, exist_ok=True)
        pages = copy_pages(args.source, site_root, limit=args.limit)
        print(f"serving {len(pages)} pages from {args.source} (copy in {site_root})", file=sys.stderr)
        with serve_site(site_root, pages) as site:
            fetch_settings = bench_settings(work / "data-fetch", model_dir)
            create_instance(fetch_settings, INSTANCE, site.url)
            print("1/3 fetch-only crawl ...", file=sys.stderr)
            fetch = run_crawl(fetch_settings, INSTANCE, own_index=False)
            loads.append(os.getloadavg()[0])
            _check(fetch, "fetched", len(pages))

            full_settings = bench_settings(work / "data-full", model_dir)
            create_instance(full_settings, INSTANCE, site.url)
            print("2/3 full pipeline crawl ...", file=sys.stderr)
            full = run_crawl(full_settings, INSTANCE, own_index=True)
            loads.append(os.getloadavg()[0])
            _check(full, "indexed", len(pages))  # a warning only: duplicates/oversize pages are skipped by design

        print("3/3 embedder vs bare onnxruntime ...", file=sys.stderr)
        texts = _pipeline_texts(full_settings, args.embed_sample)
        emb = _embedder_ratio(full_settings, model_dir, texts, rounds=args.rounds)
        loads.append(os.getloadavg()[0])

    print(_report(len(pages), fetch, full, emb))
    print(
        f"machine: {os.cpu_count()} CPUs; 1-min load average before/after each step: "
        + " / ".join(f"{x:.1f}" for x in loads)
        + " (a load above the CPU count means the figures share the machine)"
    )
    return 0 if fetch.returncode == 0 and full.returncode == 0 else 1


def _check(run: CrawlRun, status: str, expected: int) -> None:
    got = run.items.get(status, 0)
    if run.returncode != 0 or got < expected:
        print(
            f"warning: crawler exit {run.returncode}; {got}/{expected} pages {status}; items {run.items}; "
            f"job counters { {k: run.job.get(k) for k in ('fetched', 'indexed', 'skipped', 'errors')} }",
            file=sys.stderr,
        )


def _pipeline_texts(settings: Settings, n: int) -> list[str]:
    """Up to ``n`` stored chunks, evenly spaced, as the pipeline embedded them (title + chunk)."""
    store = VectorStore(settings)
    got = store._collection(INSTANCE).get(include=["documents", "metadatas"])  # bench-only peek at the store
    pairs = sorted(zip(got["ids"], got["documents"], got["metadatas"], strict=True))
    if not pairs:
        raise SystemExit("the full pipeline stored no chunks")
    step = max(1, len(pairs) // n)
    texts = []
    for _, doc, meta in pairs[::step][:n]:
        title = (meta or {}).get("title") or ""
        texts.append(f"{title}\n\n{doc}" if title else doc)
    return texts


def _embedder_ratio(settings: Settings, model_dir: Path, texts: list[str], *, rounds: int) -> dict[str, Any]:
    """Median chunks/s of ``Embedder.embed`` and of bare ``session.run`` on identical batches."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    embedder = Embedder(model_dir, threads=settings.embed_threads, batch_size=settings.embed_batch_size)
    # Same batches as Embedder.embed: same truncation, sorted by length, one text per pass for
    # dynamically quantised graphs (see Embedder's docstring), padded to the longest member.
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=embedder.max_tokens)
    encodings = tok.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
    step = 1 if embedder.quantized else settings.embed_batch_size
    pad_id = tok.token_to_id("[PAD]") or 0

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.embed_threads or os.cpu_count() or 1  # as Embedder does
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    output = session.get_outputs()[0].name
    feeds = []
    for start in range(0, len(order), step):
        batch = [encodings[i] for i in order[start : start + step]]
        width = max(len(e.ids) for e in batch)
        ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, enc in enumerate(batch):
            k = len(enc.ids)
            ids[row, :k], mask[row, :k], types[row, :k] = enc.ids, enc.attention_mask, enc.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds.append({k: v for k, v in arrays.items() if k in input_names})

    def bare() -> np.ndarray:
        outs = [session.run([output], f)[0] for f in feeds]
        return np.concatenate(outs)

    bare_s, ours_s, ratios = [], [], []
    bare_out = ours_out = None
    for _ in range(rounds):  # ABBA within each round, so both see the same machine load
        t0 = time.perf_counter()
        bare_out = bare()
        t1 = time.perf_counter()
        ours_out = embedder.embed(texts)
        t2 = time.perf_counter()
        embedder.embed(texts)
        t3 = time.perf_counter()
        bare()
        t4 = time.perf_counter()
        b, o = (t1 - t0) + (t4 - t3), (t2 - t1) + (t3 - t2)
        bare_s.append(b / 2)
        ours_s.append(o / 2)
        ratios.append(b / o)
    assert bare_out is not None and ours_out is not None
    bare_vecs = np.empty_like(ours_out)
    bare_vecs[order] = bare_out.reshape(len(texts), -1) if bare_out.ndim == 2 else bare_out
    agree = float(np.min(np.sum(_unit(bare_vecs) * _unit(ours_out), axis=1)))
    return {
        "n": len(texts),
        "batch": step,
        "tokens": sum(len(e.ids) for e in encodings),
        "bare_cps": len(texts) / statistics.median(bare_s),
        "ours_cps": len(texts) / statistics.median(ours_s),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "min_cosine": agree,
    }


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _report(n_pages: int, fetch: CrawlRun, full: CrawlRun, emb: dict[str, Any]) -> str:
    fetch_pps = fetch.items.get("fetched", 0) / fetch.window_s
    # pages the pipeline finished with (indexed, or skipped/error with a reason), not just fetched
    full_pages = sum(v for k, v in full.items.items() if k not in ("queued", "fetched", "chunks"))
    full_pps = full_pages / full.window_s
    chunks = full.items.get("chunks", 0)
    rows = [
        ["fetch-only (extraction off)", fetch.items.get("fetched", 0), None, fetch.window_s, fetch.wall_s,
         fetch_pps, None, fetch.max_rss_mb],
        ["full pipeline (fetch+extract+chunk+embed+store)", full_pages, chunks, full.window_s, full.wall_s,
         full_pps, chunks / full.window_s, full.max_rss_mb],
    ]
    crawl = format_table(
        ["run", "pages", "chunks", "crawl s", "process s", "pages/s", "chunks/s", "peak RSS MB"], rows
    )
    ratio = emb["ratio"]
    emb_rows = [
        ["bare onnxruntime session.run (baseline)", emb["bare_cps"], 1.0],
        ["Embedder.embed (tokenize+pad+run+pool)", emb["ours_cps"], ratio],
    ]
    embed = format_table(["embedder", "chunks/s", "ratio"], emb_rows)
    skipped = {k: v for k, v in full.items.items() if k not in ("indexed", "chunks")}
    return "\n".join(
        [
            f"\nsitesearch crawl+index benchmark: {n_pages} pages of the Python docs on 127.0.0.1",
            "",
            crawl,
            "",
            f"full pipeline / fetch-only pages/s: {full_pps / fetch_pps:.3f}"
            f"   (crawl s = job start to last page done; process s includes interpreter/model start-up)",
            f"full pipeline other item states: {skipped or 'none'}",
            "",
            embed,
            "",
            f"embedder sample: {emb['n']} stored chunks ({emb['tokens']:,} tokens), batch size {emb['batch']}, "
            f"{len(emb['ratios'])} ABBA rounds, ratio = median of per-round ratios "
            f"({', '.join(f'{r:.2f}' for r in emb['ratios'])}); min cosine(bare, Embedder) = {emb['min_cosine']:.5f}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
