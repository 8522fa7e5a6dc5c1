"""Extractive answers (``/ai-search`` with no generation model): which sentences get picked.

Uses the index a ``bench/retrieval.py --work-dir W`` run left in ``W`` (the Python docs) and
its questions. For each question the default ``/search`` (top chunks, as ``/ai-search``
retrieves them) is run once; then both sentence scorers of
:func:`indexer.answer.extractive_sentences` pick 4 sentences from the same top 5 chunks:

* **words**: the share of the query's words in the sentence (+ chunk score - 0.05 per rank);
* **embedding**: the sentence's embedding cosine to the query (+ the same chunk terms).

Reported per scorer, over the questions:

* ``signature``: the answer holds a gold anchor's section key (the API's signature or heading
  words in order, as ``bench/retrieval.py`` locates anchors), i.e. the answer shows the API asked for;
* ``page any`` / ``page first``: some picked sentence / the best-scored one comes from a gold page;
* ``ms``: p50 time to pick the sentences (the embedding scorer embeds every candidate sentence),
  and its ratio to the words scorer in the same run.

Usage::

    .venv/bin/python bench/retrieval.py --work-dir /tmp/ret-bench     # once, builds the index
    .venv/bin/python bench/extractive.py --work-dir /tmp/ret-bench
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_MODELS_DIR, bench_settings, ensure_model, format_table  # type: ignore[import-not-found]
from retrieval import (  # type: ignore[import-not-found]
    ACCOUNT,
    INSTANCE,
    TOKEN,
    _base_url,
    anchor_keys,
    holds,
    load_questions,
)

MAX_SENTENCES = 4


class _Hit:
    """What the answer functions read of a search result."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.filename = d["filename"]
        self.title = d["attributes"]["file"].get("title", "")
        self.text = d["content"][0]["text"]
        self.score = d["score"]
        self.context = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="the --work-dir of a bench/retrieval.py run")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from fastapi.testclient import TestClient

    from indexer.answer import embedding_similarity, extractive_sentences
    from server.app import create_app

    settings = bench_settings(args.work_dir / "data", ensure_model(args.models_dir), api_token=TOKEN)
    if not (args.work_dir / "data" / "state.db").exists():
        raise SystemExit(f"no index in {args.work_dir}: run bench/retrieval.py --work-dir {args.work_dir} first")
    questions = load_questions()
    base = _base_url(settings)
    keys = anchor_keys(args.work_dir / "site", {a for q in questions for a in q["anchors"]})
    rows: dict[str, dict[str, list[Any]]] = {"words": {}, "embedding": {}}
    with TestClient(create_app(settings)) as client:
        embedder = client.app.state.service.embedder
        for q in questions:
            r = client.post(f"{ACCOUNT}/instances/{INSTANCE}/search", json={"query": q["q"]},
                            headers={"Authorization": f"Bearer {TOKEN}"})
            hits = [_Hit(d) for d in r.json()["result"]["data"]]
            if not hits:
                continue
            page_of = {h.filename: h.filename.removeprefix(base).lstrip("/") for h in hits}
            gold_anchors = [a for a in q["anchors"] if a in keys]
            for name, similarity in (("words", None), ("embedding", embedding_similarity(embedder, q["q"]))):
                t = time.perf_counter()
                picked = extractive_sentences(q["q"], hits, max_sentences=MAX_SENTENCES, similarity=similarity)
                ms = (time.perf_counter() - t) * 1000
                cited = [int(s.rsplit("[", 1)[1].rstrip("]")) - 1 for s in picked]  # "... [n]"
                pages = [page_of[hits[i].filename] for i in cited]
                first = _best_page(q["q"], hits, similarity, page_of)
                text = " ".join(s.rsplit(" [", 1)[0] for s in picked)
                row = rows[name]
                row.setdefault("ms", []).append(ms)
                row.setdefault("page any", []).append(any(p in q["pages"] for p in pages))
                row.setdefault("page first", []).append(first in q["pages"])
                if gold_anchors:
                    row.setdefault("signature", []).append(any(holds(text, p, a, keys[(p, a)]) for p, a in gold_anchors))
    base_ms = statistics.median(rows["words"]["ms"])
    table = []
    for name, row in rows.items():
        p50 = statistics.median(row["ms"])
        table.append([name, statistics.fmean(row["signature"]), statistics.fmean(row["page any"]),
                      statistics.fmean(row["page first"]), p50, p50 / base_ms])
    n_sig = len(rows["words"]["signature"])
    print(f"{len(rows['words']['ms'])} questions ({n_sig} with a located gold anchor); {MAX_SENTENCES} sentences "
          "from the top 5 chunks of the default /search", file=sys.stderr)
    print(format_table(["scorer", "signature", "page any", "page first", "p50 ms", "ms / words"], table))
    return 0


def _best_page(query: str, hits: list[_Hit], similarity: Any, page_of: dict[str, str]) -> str:
    """The page of the single best-scored sentence."""
    from indexer.answer import extractive_sentences

    best = extractive_sentences(query, hits, max_sentences=1, similarity=similarity)
    if not best:
        return ""
    return page_of[hits[int(best[0].rsplit("[", 1)[1].rstrip("]")) - 1].filename]


if __name__ == "__main__":
    sys.exit(main())
