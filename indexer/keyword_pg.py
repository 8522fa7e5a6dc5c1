"""Keyword index in PostgreSQL: every API process and crawler worker on every machine shares it.

Used instead of the per-directory SQLite FTS5 files (:class:`indexer.keyword.KeywordIndex`)
when the state database is PostgreSQL (:func:`indexer.keyword.open_keyword_index` chooses);
same public interface, so search and rerank code does not branch.

Layout (revision ``0003`` of :mod:`indexer.migrations`, PostgreSQL only):

* ``keyword_chunks``: one row per chunk (same ids and JSON metadata as the Chroma
  collection) with a ``tsvector`` of the title (weight A) and the text (weight B),
  GIN-indexed;
* ``keyword_instances``: the tokenizer each instance's rows were built with.

Tokenizers: ``porter`` → the ``english`` text search configuration (Snowball stemming,
English stop words); ``trigram`` → the ``simple`` configuration with prefix matching
(``term:*``).  Text is split on non-word characters before ``to_tsvector`` (as FTS5's
``unicode61`` does), so ``re.findall`` is the words ``re`` and ``findall``, not one
"file name" token.

Scores: ``ts_rank_cd`` (cover density; title weighted 2x text via weights
``{D,C,B,A} = {0.1, 0.2, 0.5, 1.0}``) with normalisation 32, i.e. ``rank / (rank + 1)``,
so scores lie in [0, 1).  They are *not* BM25: no inverse document frequency (a rare
term does not outweigh a common one) and document length is not normalised.  Scores
are comparable within one query only, which is all RRF fusion and the reranker need.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine

from indexer.keyword import (
    DEFAULT_TOKENIZER,
    MATCH_MODES,
    RANK_ALL_ROWS,
    TOKENIZERS,
    KeywordHit,
    KeywordQueryError,
    query_terms,
    split_or_terms,
    where_to_sql,
)

logger = logging.getLogger(__name__)

#: our tokenizer names → PostgreSQL text search configurations
PG_CONFIGS = {"porter": "english", "trigram": "simple"}
RANK_WEIGHTS = "{0.1, 0.2, 0.5, 1.0}"  # D, C, B (text), A (title)
RANK_NORMALIZATION = 32  # rank / (rank + 1): [0, 1)
STATS_SECONDS = 60.0  # how long the column statistics read by `_or_terms` are reused


def _tsv_sql(title: str = "%s", text: str = "%s") -> str:
    """SQL building a chunk's ``tsvector`` (parameters: config, title, config, text — or just the configs
    when ``title``/``text`` name columns)."""
    return (
        f"setweight(to_tsvector(%s::regconfig, regexp_replace({title}, '\\W+', ' ', 'g')), 'A') || "
        f"setweight(to_tsvector(%s::regconfig, regexp_replace({text}, '\\W+', ' ', 'g')), 'B')"
    )


def tsquery_text(terms: Sequence[str], mode: str, tokenizer: str) -> str:
    """A ``to_tsquery`` string: each term a quoted lexeme (no query syntax from users), joined by ``&``/``|``.

    Raises:
        KeywordQueryError: an unknown match mode.
    """
    if mode not in MATCH_MODES:
        raise KeywordQueryError(f"keyword_match_mode: must be one of {', '.join(MATCH_MODES)}, got {mode!r}")
    suffix = ":*" if tokenizer == "trigram" else ""
    quoted = ["'" + t.replace("'", "''").replace("\\", "\\\\") + "'" + suffix for t in terms]
    return (" & " if mode == "and" else " | ").join(quoted)


class PgKeywordIndex:
    """Keyword rows of every instance in the state database (PostgreSQL).

    Args:
        engine: the state database's engine (its schema at revision ``0003`` or later).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._stats: tuple[float, tuple[dict[str, float], float, float] | None] | None = None

    # --- tokenizer -------------------------------------------------------------
    def tokenizer(self, instance_id: str) -> str:
        """The tokenizer the instance's rows were built with."""
        with self.engine.connect() as conn:
            return self._tokenizer(conn, instance_id)

    @staticmethod
    def _tokenizer(conn: Connection, instance_id: str) -> str:
        row = conn.exec_driver_sql(
            "SELECT tokenizer FROM keyword_instances WHERE instance_id = %s", (instance_id,)
        ).first()
        return row[0] if row else DEFAULT_TOKENIZER

    def _ensure_tokenizer(self, conn: Connection, instance_id: str, tokenizer: str | None) -> str:
        """Lock the instance's row (creating it) and rebuild its vectors when the tokenizer changed."""
        if tokenizer is not None and tokenizer not in TOKENIZERS:
            raise KeywordQueryError(f"indexing_options.keyword_tokenizer: must be one of {', '.join(TOKENIZERS)}")
        conn.exec_driver_sql(
            "INSERT INTO keyword_instances (instance_id, tokenizer) VALUES (%s, %s) ON CONFLICT (instance_id) DO NOTHING",
            (instance_id, tokenizer or DEFAULT_TOKENIZER),
        )
        current = conn.exec_driver_sql(
            "SELECT tokenizer FROM keyword_instances WHERE instance_id = %s FOR UPDATE", (instance_id,)
        ).scalar_one()
        if tokenizer is None or tokenizer == current:
            return str(current)
        logger.info("keyword index %s: tokenizer %s -> %s (rebuilding)", instance_id, current, tokenizer)
        cfg = PG_CONFIGS[tokenizer]
        conn.exec_driver_sql(
            f"UPDATE keyword_chunks SET tsv = {_tsv_sql('title', 'text')} WHERE instance_id = %s",
            (cfg, cfg, instance_id),
        )
        conn.exec_driver_sql(
            "UPDATE keyword_instances SET tokenizer = %s WHERE instance_id = %s", (tokenizer, instance_id)
        )
        return tokenizer

    # --- writes ----------------------------------------------------------------
    def replace_item(
        self,
        instance_id: str,
        item_id: str,
        chunk_ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
        *,
        tokenizer: str | None = None,
    ) -> None:
        """Replace all keyword rows of one item (same ids as the vector store), in one transaction."""
        with self.engine.begin() as conn:
            cfg = PG_CONFIGS[self._ensure_tokenizer(conn, instance_id, tokenizer)]
            conn.exec_driver_sql(
                "DELETE FROM keyword_chunks WHERE instance_id = %s AND item_id = %s", (instance_id, item_id)
            )
            rows = []
            for cid, text, meta in zip(chunk_ids, texts, metadatas, strict=True):
                title = _clean(meta.get("title") or "")
                body = _clean(text)
                rows.append((instance_id, cid, item_id, json.dumps(dict(meta)).replace("\\u0000", ""), title, body,
                             cfg, title, cfg, body))
            if rows:
                conn.exec_driver_sql(
                    "INSERT INTO keyword_chunks (instance_id, chunk_id, item_id, meta, title, text, tsv)"
                    f" VALUES (%s, %s, %s, %s::jsonb, %s, %s, {_tsv_sql()})"
                    " ON CONFLICT (instance_id, chunk_id) DO UPDATE SET item_id = EXCLUDED.item_id,"
                    " meta = EXCLUDED.meta, title = EXCLUDED.title, text = EXCLUDED.text, tsv = EXCLUDED.tsv",
                    rows,
                )

    def delete_item(self, instance_id: str, item_id: str) -> None:
        """Remove an item's rows."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                "DELETE FROM keyword_chunks WHERE instance_id = %s AND item_id = %s", (instance_id, item_id)
            )

    def drop_instance(self, instance_id: str) -> None:
        """Delete an instance's rows and its tokenizer."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM keyword_chunks WHERE instance_id = %s", (instance_id,))
            conn.exec_driver_sql("DELETE FROM keyword_instances WHERE instance_id = %s", (instance_id,))

    # --- reads -----------------------------------------------------------------
    def count(self, instance_id: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM keyword_chunks WHERE instance_id = %s", (instance_id,)
                ).scalar_one()
            )

    def query(
        self,
        instance_id: str,
        query: str,
        *,
        n: int,
        where: Mapping[str, Any] | None = None,
        match_mode: str = "or",
    ) -> list[KeywordHit]:
        """Best ``n`` chunks by ``ts_rank_cd`` (title weighted 2x text, in [0, 1)) that pass ``where``.

        Raises:
            KeywordQueryError: bad match mode or filter.
        """
        where_sql, where_params = where_to_sql(where, dialect="postgresql")
        with self.engine.connect() as conn:
            tokenizer = self._tokenizer(conn, instance_id)
            terms = query_terms(query, tokenizer=tokenizer)
            if not terms:
                tsquery_text([], match_mode, tokenizer)  # still reject a bad match mode
                return []
            tsq = tsquery_text(terms, match_mode, tokenizer)
            candidates = tsq  # the rows ranked: those matching this
            if match_mode == "or" and tokenizer == "porter" and len(terms) > 1:
                split = self._or_terms(conn, terms)
                if split is not None:
                    candidates, tsq = (tsquery_text(t, "or", tokenizer) for t in split)
            cfg = PG_CONFIGS[tokenizer]
            rows = conn.exec_driver_sql(
                f"SELECT c.chunk_id, c.text, c.meta, ts_rank_cd('{RANK_WEIGHTS}', c.tsv, q, {RANK_NORMALIZATION}) AS score"
                " FROM keyword_chunks c, to_tsquery(%s::regconfig, %s) q, to_tsquery(%s::regconfig, %s) f"
                f" WHERE c.instance_id = %s AND c.tsv @@ f AND {where_sql}"
                " ORDER BY score DESC, c.chunk_id LIMIT %s",
                (cfg, tsq, cfg, candidates, instance_id, *where_params, int(n)),
            ).all()
        return [KeywordHit(cid, text, dict(meta), float(score)) for cid, text, meta, score in rows]

    def _or_terms(self, conn: Connection, terms: list[str]) -> tuple[list[str], list[str]] | None:
        """For an ``or`` query matching many rows: ``(candidate terms, ranking terms)``; None = rank every match.

        ``ts_rank_cd`` reads each matching row's vector, so an ``or`` of common words ranked most
        of the table (p50 128 ms, p95 307 ms at 100,000 chunks). As the FTS5 index does
        (:meth:`indexer.keyword.KeywordIndex._or_expressions`): when the terms together occur in
        more than :data:`~indexer.keyword.RANK_ALL_ROWS` rows, terms in more than
        :data:`~indexer.keyword.COMMON_TERM_SHARE` of the rows are left out (the rarest is kept if
        all are), and only rows holding one of the rarest terms (up to
        :data:`~indexer.keyword.CANDIDATE_SHARE` of the rows, summed) are ranked, by all the
        kept terms (:func:`~indexer.keyword.split_or_terms`, shared with FTS5). Term shares come
        from PostgreSQL's own statistics of the column (``pg_stats.most_common_elems``, kept by
        ANALYZE/autovacuum, for the whole table rather than per instance); a term not listed is
        rarer than every listed one. Without statistics yet, every match is ranked.
        """
        stats = self._term_stats(conn)
        if stats is None:
            return None
        shares, floor, rows = stats
        lexemes = conn.exec_driver_sql(
            "SELECT t, tsvector_to_array(to_tsvector('english', t)) FROM unnest(%s::text[]) AS t", (terms,)
        ).all()
        held = {t: rows * max((shares.get(lx, floor) for lx in lxs), default=0.0) for t, lxs in lexemes}
        if sum(held.values()) <= RANK_ALL_ROWS:
            return None
        return split_or_terms(terms, held, rows)

    def _term_stats(self, conn: Connection) -> tuple[dict[str, float], float, float] | None:
        """``(share of rows per common lexeme, share below the listed ones, rows)``, cached for a minute."""
        now = time.monotonic()
        if self._stats is not None and now - self._stats[0] < STATS_SECONDS:
            return self._stats[1]
        row = conn.exec_driver_sql(
            "SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, c.reltuples"
            " FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename"
            " WHERE s.tablename = 'keyword_chunks' AND s.attname = 'tsv' AND s.schemaname = current_schema()"
        ).first()
        stats = None
        if row is not None and row[0] and row[1] and row[2] > 0:
            shares = dict(zip(row[0], row[1][: len(row[0])], strict=True))
            stats = (shares, min(shares.values()), float(row[2]))
        self._stats = (now, stats)
        return stats

    def score_ids(self, instance_id: str, query: str, chunk_ids: list[str]) -> dict[str, float]:
        """Keyword scores of the given chunks for ``query`` (OR of its terms); chunks matching no term are left out."""
        if not chunk_ids:
            return {}
        with self.engine.connect() as conn:
            tokenizer = self._tokenizer(conn, instance_id)
            terms = query_terms(query, tokenizer=tokenizer)
            if not terms:
                return {}
            rows = conn.exec_driver_sql(
                f"SELECT c.chunk_id, ts_rank_cd('{RANK_WEIGHTS}', c.tsv, q, {RANK_NORMALIZATION})"
                " FROM keyword_chunks c, to_tsquery(%s::regconfig, %s) q"
                " WHERE c.instance_id = %s AND c.chunk_id = ANY(%s) AND c.tsv @@ q",
                (PG_CONFIGS[tokenizer], tsquery_text(terms, "or", tokenizer), instance_id, list(chunk_ids)),
            ).all()
        return {cid: float(score) for cid, score in rows}


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters."""
    return text.replace("\x00", "")
