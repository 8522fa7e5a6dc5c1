"""PostgreSQL keyword ``or`` queries at 100,000 chunks: the bounded query against ranking every match.

Loads the chunks of a ``bench/search_load.py`` work directory (its FTS5 keyword file holds the
100,000 chunks) into a fresh PostgreSQL cluster started here (Debian's ``postgresql``, as
``make services`` installs; trust auth on loopback), ANALYZEs, then runs the Python-docs
questions with ``python.*`` targets (``bench/retrieval.py``) three ways, alternated:

1. **exact**: the ``or`` of every word, ``ts_rank_cd`` over every matching row (the
   query before the bound; the baseline);
2. **bounded**: :meth:`indexer.keyword_pg.PgKeywordIndex.query` (common words left out,
   only rows holding the rarest ranked);
3. **FTS5**: the same chunks in SQLite FTS5 (:class:`indexer.keyword.KeywordIndex`).

Prints p50/p95/max latency (top 50), the bounded query's p50 over the exact one's, and
page-level Recall@5/10 of keyword-only retrieval.

Usage::

    .venv/bin/python bench/search_load.py --seed /tmp/ret-bench/data --work-dir /tmp/load-bench
    .venv/bin/python bench/keyword_pg.py --work-dir /tmp/load-bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, format_table  # type: ignore[import-not-found]
from retrieval import load_questions  # type: ignore[import-not-found]

sys.path.insert(0, str(REPO))

INSTANCE = "load"  # bench/search_load.py's instance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="a bench/search_load.py --work-dir")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    from indexer import migrations
    from indexer.keyword import KeywordIndex, query_terms
    from indexer.keyword_pg import RANK_NORMALIZATION, RANK_WEIGHTS, PgKeywordIndex, tsquery_text
    from indexer.state import make_engine

    keyword_dir = args.work_dir / "data" / "keyword"
    src = sqlite3.connect(keyword_dir / f"{INSTANCE}.sqlite")
    rows = src.execute("SELECT chunk_id, item_id, meta, text FROM chunks").fetchall()
    filename = {cid: json.loads(meta).get("filename", "") for cid, _, meta, _ in rows}
    questions = load_questions()
    from tests.services import PG_BIN_DIRS, create_database, start_postgres, stop

    if not PG_BIN_DIRS:
        raise SystemExit("PostgreSQL is not installed (make services, or apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="bench-kwpg-"))
    proc, server_url = start_postgres(root)
    url = create_database(server_url, "kwbench")
    try:
        engine = make_engine(url)
        migrations.upgrade(engine)
        pg = PgKeywordIndex(engine)
        t = time.monotonic()
        by_item: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for cid, item, meta, text in rows:
            by_item.setdefault(item, []).append((cid, text, json.loads(meta)))
        for item, chunks in by_item.items():
            pg.replace_item(INSTANCE, item, [c[0] for c in chunks], [c[1] for c in chunks], [c[2] for c in chunks])
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE keyword_chunks")
        print(f"{pg.count(INSTANCE)} chunks loaded in {time.monotonic() - t:.0f} s", file=sys.stderr)

        def exact(q: str) -> list[str]:
            with engine.connect() as conn:
                return [r[0] for r in conn.exec_driver_sql(
                    f"SELECT c.chunk_id, ts_rank_cd('{RANK_WEIGHTS}', c.tsv, q, {RANK_NORMALIZATION}) AS score"
                    " FROM keyword_chunks c, to_tsquery('english', %s) q WHERE c.instance_id = %s AND c.tsv @@ q"
                    " ORDER BY score DESC, c.chunk_id LIMIT 50",
                    (tsquery_text(query_terms(q), "or", "porter"), INSTANCE)).all()]

        fts = KeywordIndex(keyword_dir)
        setups = {"exact or (PostgreSQL)": exact,
                  "bounded or (PostgreSQL)": lambda q: [h.chunk_id for h in pg.query(INSTANCE, q, n=50)],
                  "FTS5 (SQLite)": lambda q: [h.chunk_id for h in fts.query(INSTANCE, q, n=50)]}
        times: dict[str, list[float]] = {name: [] for name in setups}
        recall: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, fn in setups.items():
                for row in questions[:5]:
                    fn(row["q"])  # warm
                hits5 = hits10 = 0
                for row in questions:
                    t0 = time.perf_counter()
                    ids = fn(row["q"])
                    times[name].append((time.perf_counter() - t0) * 1000)
                    pages = [filename[c] for c in ids]
                    found = [any(p.endswith("/" + g) for g in row["pages"]) for p in pages]
                    hits5 += any(found[:5])
                    hits10 += any(found[:10])
                recall[name] = (hits5 / len(questions), hits10 / len(questions))
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)

    def pct(ms: list[float], p: float) -> float:
        s = sorted(ms)
        return s[min(len(s) - 1, int(len(s) * p))]

    base = pct(times["exact or (PostgreSQL)"], 0.5)
    table = [[name, pct(ms, 0.5), pct(ms, 0.95), max(ms), pct(ms, 0.5) / base, *recall[name]]
             for name, ms in times.items()]
    print(f"{len(rows)} chunks; {len(questions)} questions x {args.rounds} rounds; top 50, keyword only")
    print(format_table(["setup", "p50 ms", "p95 ms", "max ms", "p50 / exact", "page R@5", "page R@10"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
