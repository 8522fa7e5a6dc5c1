"""``/search`` latency at 100,000 chunks under concurrent clients, against bare embed + Chroma.

Builds a 100,000-chunk instance from a seed index made by ``bench/retrieval.py``
(the Python docs' real chunks and embeddings, copied under new item ids until the
target size is reached; copies get their embedding nudged by small noise so HNSW
sees distinct points), in both indexes (Chroma + keyword), then, in the same run and
for each client count (default 1 and 4):

1. bare: this process embeds each query with the product's :class:`~indexer.embedder.Embedder`
   (same model, same settings as the server) and queries the same Chroma collection
   directly (``collection.query``, ``n_results=10``, documents + metadatas + distances),
   from N threads;
2. server: ``sitesearch serve`` in a child process (uvicorn, real HTTP) answering
   ``POST /search`` (the instance's default retrieval, vector; top 10; no reranking)
   to ``wrk`` with N connections (a C load generator, so the client costs the 2 cores
   little; without ``wrk`` on PATH, N Python threads with httpx, which inflates the
   server's figures); then one round of hybrid retrieval (absolute figures only: it does
   more than the baseline, a keyword query and fusion).

Bare and server rounds alternate (bare, server, server, bare; the bare side reads the
collection while the idle server owns it) and each side's p50/p95 is the median over its
rounds, so both see the same machine load. Reports p50/p95 per setup and the server's
p50 over the bare p50.

Usage::

    .venv/bin/python bench/retrieval.py --work-dir /tmp/ret-bench    # once, makes the seed
    .venv/bin/python bench/search_load.py --seed /tmp/ret-bench/data --work-dir /tmp/load-bench
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import socket
import statistics
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
    from chromadb.config import Settings as ChromaSettings

    from indexer.state import StateStore
    from indexer.vectorstore import VectorStore, collection_name

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


def run_for(fn: Any, queries: list[str], clients: int, seconds: float) -> list[float]:
    """Call ``fn(query)`` from ``clients`` threads for ``seconds``; per-call ms."""
    deadline = time.perf_counter() + seconds

    def worker(k: int) -> list[float]:
        out, i = [], k
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            fn(queries[i % len(queries)])
            out.append((time.perf_counter() - t) * 1000)
            i += clients
        return out

    with cf.ThreadPoolExecutor(clients) as pool:
        return [ms for part in pool.map(worker, range(clients)) for ms in part]


class Bare:
    """Embed + Chroma query in this process: the floor the server is compared with."""

    def __init__(self, settings: Any, model_dir: Path) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        from indexer.embedder import load_embedder
        from indexer.vectorstore import collection_name

        # the server's embedder settings (IndexService): same threads, same query path
        self.embedder = load_embedder(model_dir, settings.models_dir, threads=settings.embed_threads,
                                      batch_size=settings.embed_batch_size)
        client = chromadb.PersistentClient(path=str(settings.chroma_dir),
                                           settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))
        self.col = client.get_collection(collection_name(INSTANCE))

    def __call__(self, q: str) -> None:
        self.col.query(query_embeddings=np.asarray([self.embedder.embed_query(q)], np.float32), n_results=10,
                       include=["documents", "metadatas", "distances"])


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


SEARCH_PATH = f"/client/v4/accounts/local/ai-search/instances/{INSTANCE}/search"
WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %s"}, bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('WRK {"p50": %%f, "p95": %%f, "n": %%d, "errors": %%d}\\n',
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_round(url: str, script: Path, clients: int, seconds: float) -> tuple[float, float, int]:
    """``wrk`` with ``clients`` connections for ``seconds``: p50 ms, p95 ms, requests."""
    out = subprocess.run(["wrk", "-t", str(clients), "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    res = json.loads(out[out.index("WRK ") + 4:].splitlines()[0])
    if res["errors"]:
        raise SystemExit(f"wrk saw {res['errors']} errors:\n{out}")
    return res["p50"], res["p95"], res["n"]


def write_wrk_script(path: Path, queries: list[str], extra: dict[str, Any] | None = None) -> Path:
    """A wrk Lua script posting each query in turn (with ``extra`` body fields)."""
    bodies = ",\n".join(f"[==[{json.dumps({'query': q, **(extra or {})})}]==]" for q in queries)
    path.write_text(WRK_SCRIPT % (bodies, SEARCH_PATH, TOKEN))
    return path


def http_round(url: str, queries: list[str], clients: int, seconds: float,
               extra: dict[str, Any] | None = None) -> tuple[float, float, int]:
    """The same with Python threads (httpx), when ``wrk`` is not installed."""
    import threading

    import httpx

    local = threading.local()

    def one(q: str) -> None:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        local.c.post(SEARCH_PATH, json={"query": q, **(extra or {})}).raise_for_status()

    ms = run_for(one, queries, clients, seconds)
    return *percentiles(ms), len(ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=Path, required=True, help="data dir of a bench/retrieval.py run")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep (and reuse) the 100k-chunk data dir here")
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured round")
    parser.add_argument("--rounds", type=int, default=4, help="bare/server pairs per client count (ABBA order)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    args = parser.parse_args(argv)

    model_dir = ensure_model(args.models_dir)
    questions = [r["nl"] for r in json.loads(QUESTIONS.read_text())]
    client_counts = [int(c) for c in args.clients.split(",")]
    use_wrk = shutil.which("wrk") is not None
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = args.work_dir or Path(tmp)
        settings = bench_settings(work / "data", model_dir, api_token=TOKEN)
        t = time.monotonic()
        store = build(args.seed, settings, args.chunks)
        total = store.count(INSTANCE)
        print(f"instance holds {total} chunks (built or reused in {time.monotonic() - t:.0f} s)", file=sys.stderr)
        from chromadb.api.shared_system_client import SharedSystemClient

        del store
        SharedSystemClient.clear_system_cache()  # let the server process own the store
        script = write_wrk_script(Path(tmp) / "queries.lua", questions)
        hybrid_body = {"ai_search_options": {"retrieval": {"retrieval_type": "hybrid"}}}
        hybrid_script = write_wrk_script(Path(tmp) / "hybrid.lua", questions, hybrid_body)
        proc, url = serve(settings, model_dir)
        rows: list[list[Any]] = []
        try:
            bare = Bare(settings, model_dir)
            run_for(bare, questions, 2, 3)  # warm-up: model, HNSW pages
            (wrk_round(url, script, 2, 3) if use_wrk else http_round(url, questions, 2, 3))
            for clients in client_counts:
                b_runs: list[tuple[float, float, int]] = []
                s_runs: list[tuple[float, float, int]] = []
                for r in range(args.rounds):
                    for side in ("bare", "server") if r % 2 == 0 else ("server", "bare"):
                        if side == "bare":
                            ms = run_for(bare, questions, clients, args.seconds)
                            b_runs.append((*percentiles(ms), len(ms)))
                        elif use_wrk:
                            s_runs.append(wrk_round(url, script, clients, args.seconds))
                        else:
                            s_runs.append(http_round(url, questions, clients, args.seconds))
                        print(f"  {clients} clients {side}: {(b_runs if side == 'bare' else s_runs)[-1]}", file=sys.stderr)
                b50, b95 = (statistics.median(x[i] for x in b_runs) for i in (0, 1))
                s50, s95 = (statistics.median(x[i] for x in s_runs) for i in (0, 1))
                qps_b = sum(x[2] for x in b_runs) / (args.seconds * len(b_runs))
                qps_s = sum(x[2] for x in s_runs) / (args.seconds * len(s_runs))
                rows.append([clients, "bare embed + Chroma query", b50, b95, None, qps_b])
                rows.append([clients, "/search (HTTP)" + ("" if use_wrk else ", httpx client"), s50, s95,
                             s50 / b50, qps_s])
                # hybrid does more than the bare baseline (keyword query + fusion): absolute figures only
                h50, h95, hn = (wrk_round(url, hybrid_script, clients, args.seconds) if use_wrk
                                else http_round(url, questions, clients, args.seconds, hybrid_body))
                rows.append([clients, "/search hybrid (HTTP, 1 round)", h50, h95, None, hn / args.seconds])
        finally:
            proc.terminate()
            proc.wait(30)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{total} chunks; top 10, no reranking, vector retrieval unless marked hybrid; {args.rounds} rounds x {args.seconds:g} s per "
          f"setup (median of rounds); load generator: {'wrk' if use_wrk else 'httpx threads'}")
    print(format_table(["clients", "setup", "p50 ms", "p95 ms", "p50 / bare", "queries/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
