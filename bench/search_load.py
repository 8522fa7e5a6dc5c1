"""``/search`` latency at 100,000 chunks under 4 concurrent clients, against bare embed + Chroma.

Builds a 100,000-chunk instance from a seed index made by ``bench/retrieval.py``
(the Python docs' real chunks and embeddings, copied under new item ids until the
target size is reached; copies get their embedding nudged by small noise so HNSW
sees distinct points), in both indexes (Chroma + keyword), then in the same run:

1. baseline: this process embeds each query with the product's embedder and queries
   Chroma directly (``collection.query``, same ``n_results``), 4 threads;
2. server: ``sitesearch serve`` in a child process (uvicorn, real HTTP), 4 client
   threads posting ``/search`` (vector retrieval, hybrid retrieval; no reranking).

Reports p50/p95 per setup and the server's overhead over the baseline.

Usage::

    .venv/bin/python bench/retrieval.py --work-dir /tmp/ret-bench    # once, makes the seed
    .venv/bin/python bench/search_load.py --seed /tmp/ret-bench/data
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import DEFAULT_MODELS_DIR, REPO, bench_settings, ensure_model, format_table  # type: ignore[import-not-found]

INSTANCE = "load"
SEED_INSTANCE = "pydocs"
TOKEN = "load-token"
QUESTIONS = REPO.parent / "shared" / "eval" / "retrieval" / "conala_dev.json"


def build(seed: Path, settings: Any, target: int) -> Any:
    """Copy the seed's chunks into ``INSTANCE`` until it holds ``target`` chunks; returns the store."""
    import chromadb

    from indexer.state import StateStore
    from indexer.vectorstore import VectorStore, collection_name

    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    src = chromadb.PersistentClient(path=str(seed / "chroma"), settings=chroma_settings)
    got = src.get_collection(collection_name(SEED_INSTANCE)).get(include=["documents", "metadatas", "embeddings"])
    ids, docs, metas, embs = got["ids"], got["documents"], got["metadatas"], np.asarray(got["embeddings"], np.float32)
    state = StateStore(settings.resolved_database_url)
    if state.get_instance(INSTANCE) is None:
        state.create_instance(INSTANCE, "r2", None, {"id": INSTANCE, "type": "r2"})
    state.close()
    store = VectorStore(settings)
    rng = np.random.default_rng(0)
    n, copy = store.count(INSTANCE), 0
    while n < target:
        by_item: dict[str, list[int]] = {}
        for i, meta in enumerate(metas):
            by_item.setdefault(str(meta["item_id"]), []).append(i)
        for item, rows in by_item.items():
            if n >= target:
                break
            rows = rows[: target - n]
            vecs = embs[rows] + (rng.normal(scale=0.01, size=(len(rows), embs.shape[1])) if copy else 0)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            new_item = f"{item}-c{copy}"
            new_metas = [{**metas[r], "item_id": new_item, "chunk": k} for k, r in enumerate(rows)]
            store.replace_item(INSTANCE, new_item, [docs[r] for r in rows], vecs.astype(np.float32), new_metas)
            n += len(rows)
        copy += 1
        print(f"  {n} chunks", file=sys.stderr)
    del ids
    return store


def percentiles(ms: list[float]) -> tuple[float, float]:
    s = sorted(ms)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.95))]


def run_clients(fn: Any, queries: list[str], clients: int) -> tuple[list[float], float]:
    """Run ``fn(query)`` over ``queries`` with ``clients`` threads; per-call ms and wall seconds."""
    def timed(q: str) -> float:
        t = time.perf_counter()
        fn(q)
        return (time.perf_counter() - t) * 1000

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        ms = list(pool.map(timed, queries))
    return ms, time.perf_counter() - t0


def baseline(store: Any, settings: Any, model_dir: Path, queries: list[str], clients: int, n: int) -> list[float]:
    """Bare embed + Chroma query, the floor the server is compared with."""
    from indexer.embedder import load_embedder

    embedder = load_embedder(model_dir, settings.models_dir, threads=settings.embed_threads)
    col = store._collection(INSTANCE)  # bench-only: the raw Chroma collection

    def one(q: str) -> None:
        col.query(query_embeddings=np.asarray([embedder.embed_query(q)], np.float32), n_results=n,
                  include=["documents", "metadatas", "distances"])

    run_clients(one, queries[:20], clients)  # warm-up
    ms, _ = run_clients(one, queries, clients)
    return ms


def serve(settings: Any, model_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SITESEARCH_DATA_DIR": str(settings.data_dir), "SITESEARCH_MODEL_DIR": str(model_dir),
           "SITESEARCH_API_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=Path, required=True, help="data dir of a bench/retrieval.py run")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the 100k-chunk data dir here")
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    args = parser.parse_args(argv)

    import httpx

    model_dir = ensure_model(args.models_dir)
    questions = [r["nl"] for r in json.loads(QUESTIONS.read_text())]
    queries = [questions[i % len(questions)] + ("" if i < len(questions) else f" ({i})") for i in range(args.queries)]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = args.work_dir or Path(tmp)
        settings = bench_settings(work / "data", model_dir, api_token=TOKEN)
        t = time.monotonic()
        store = build(args.seed, settings, args.chunks)
        total = store.count(INSTANCE)
        build_s = time.monotonic() - t
        print(f"instance holds {total} chunks (built in {build_s:.0f} s); baseline ...", file=sys.stderr)
        base_ms = baseline(store, settings, model_dir, queries, args.clients, 10)
        from chromadb.api.shared_system_client import SharedSystemClient

        del store
        SharedSystemClient.clear_system_cache()  # let the server process own the store
        proc, url = serve(settings, model_dir)
        rows = [["bare embed + Chroma query", *percentiles(base_ms), None, None]]
        try:
            client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            for label, rtype in (("/search vector", "vector"), ("/search hybrid", "hybrid")):
                def one(q: str, rtype: str = rtype) -> None:
                    r = client.post(f"/client/v4/accounts/local/ai-search/instances/{INSTANCE}/search",
                                    json={"query": q, "ai_search_options": {"retrieval": {"retrieval_type": rtype}}})
                    r.raise_for_status()

                run_clients(one, queries[:20], args.clients)
                ms, wall = run_clients(one, queries, args.clients)
                p50, p95 = percentiles(ms)
                rows.append([label, p50, p95, p50 / rows[0][1] - 1, len(queries) / wall])
        finally:
            proc.terminate()
            proc.wait(30)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{total} chunks, {args.clients} concurrent clients, {len(queries)} queries each setup, top 10, no reranking")
    print(format_table(["setup", "p50 ms", "p95 ms", "p50 overhead", "queries/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
