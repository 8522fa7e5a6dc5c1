"""Keyword index beside the vectors: SQLite FTS5 with BM25 ranking, one file per instance.

Why FTS5: it ships with Python's ``sqlite3`` (no package), persists and updates
one item at a time (``bm25s`` rebuilds a static index; ``tantivy`` adds a Rust
wheel and its own commit/reader model), reads concurrently from many threads
under WAL, and its ``porter`` and ``trigram`` tokenizers are exactly Cloudflare's
``indexing_options.keyword_tokenizer`` values.  Measured numbers are in
``docs/search-quality.md``.

Layout (``<data_dir>/keyword/<instance>.sqlite``): a ``chunks`` table with the
same ids and metadata (JSON, custom fields included) as the Chroma collection, and an external-content
FTS5 table over ``title`` and ``text``.  Filters arrive as the Chroma ``where``
clause :func:`indexer.metafilter.compile_filters` built, translated to SQL here,
so both indexes apply one compiled filter identically.

Writes happen in the process that owns the vector store (:class:`indexer.vectorstore.VectorStore`
mirrors every replace/delete here); other processes only read.

With a PostgreSQL state database the keyword index lives there instead
(:mod:`indexer.keyword_pg`, same interface), so API processes on several machines
share it; :func:`open_keyword_index` is the one place that chooses.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from indexer.config import Settings
    from indexer.keyword_pg import PgKeywordIndex

logger = logging.getLogger(__name__)

TOKENIZERS = {
    "porter": "porter unicode61 remove_diacritics 2",
    "trigram": "trigram",
}
DEFAULT_TOKENIZER = "porter"
MATCH_MODES = ("and", "or")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_WORD = re.compile(r"\w+", re.UNICODE)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL UNIQUE,
    item_id TEXT NOT NULL,
    meta TEXT NOT NULL,  -- the chunk's metadata as in Chroma (JSON); filters read it
    title TEXT,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_item ON chunks(item_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class KeywordQueryError(ValueError):
    """A filter or option the keyword index cannot apply."""


@dataclass(frozen=True, slots=True)
class KeywordHit:
    """One chunk matched by a keyword query; ``bm25`` is positive, higher is better."""

    chunk_id: str
    text: str
    metadata: dict[str, Any]
    bm25: float


#: English function words left out of keyword queries: BM25 gives them almost no weight, but
#: matching them touches nearly every row (an OR query) or demands them (an AND query).
#: All 58 are in the Snowball English list that PostgreSQL's ``english`` configuration uses
#: (``tsearch_data/english.stop``), so both keyword backends drop them, in both match modes.
STOPWORDS = frozenset(
    "a an and are as at be been but by can do does for from had has have how i if in into is it its me my "
    "of on or our so than that the their them then there these they this to was we were what when where "
    "which who whom why will with you your".split()
)


#: Bounds on the rows an ``or`` query ranks (BM25 scores every matching row: a few common
#: words made that most of the index, tens of ms at 100,000 chunks).  When the query's terms
#: occur in more than ``RANK_ALL_ROWS`` rows (summed per term), terms found in more than
#: ``COMMON_TERM_SHARE`` of the instance's rows are left out (a term in 20 % of the rows has an
#: IDF of 1.4, a rare one 5-9), and only rows holding one of the rarest terms (up to
#: ``CANDIDATE_SHARE`` of the rows, summed) are ranked, with every kept term scored.
#: Chosen by measurement (``docs/search-quality.md``); see :meth:`KeywordIndex._or_expressions`.
RANK_ALL_ROWS = 2_000
COMMON_TERM_SHARE = 0.2
CANDIDATE_SHARE = 0.1


def query_terms(query: str, *, tokenizer: str = DEFAULT_TOKENIZER) -> list[str]:
    """The distinct words of a query that the tokenizer can match (trigram needs ≥ 3 characters).

    Stop words are dropped unless the query has nothing else.
    """
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if tokenizer == "trigram" and len(word) < 3:
            continue
        seen.setdefault(word, None)
    content = [w for w in seen if w not in STOPWORDS]
    return content or list(seen)


def split_or_terms(terms: Sequence[str], rows: Mapping[str, float], total: float) -> tuple[list[str], list[str]]:
    """The terms an ``or`` query over many rows ranks: ``(candidate terms, kept terms)``.

    Terms in more than :data:`COMMON_TERM_SHARE` of the ``total`` rows are left out (the rarest
    is kept if all are); the rarest kept terms, up to :data:`CANDIDATE_SHARE` of the rows summed,
    pick the candidate rows, which are ranked by every kept term. Shared by both backends.

    Args:
        terms: the query's terms.
        rows: how many rows hold each term (counted or estimated).
        total: the rows of the index.
    """
    kept = sorted((t for t in terms if rows[t] <= COMMON_TERM_SHARE * total), key=rows.__getitem__)
    kept = kept or [min(terms, key=rows.__getitem__)]
    rare: list[str] = []
    held = 0.0
    for t in kept:
        if rare and held + rows[t] > CANDIDATE_SHARE * total:
            break
        rare.append(t)
        held += rows[t]
    return rare, kept


def match_expression(terms: Sequence[str], mode: str = "or") -> str:
    """An FTS5 MATCH string: each term quoted (no FTS syntax from users), joined by AND/OR."""
    if mode not in MATCH_MODES:
        raise KeywordQueryError(f"keyword_match_mode: must be one of {', '.join(MATCH_MODES)}, got {mode!r}")
    quoted = ['"' + t.replace('"', '""') + '"' for t in terms]
    return f" {mode.upper()} ".join(quoted)


def where_to_sql(where: Mapping[str, Any] | None, *, dialect: str = "sqlite") -> tuple[str, list[Any]]:
    """Translate a Chroma ``where`` (as compiled by :mod:`indexer.metafilter`) to SQL over ``chunks`` (alias ``c``).

    One translation for both keyword backends, so they filter identically: on SQLite
    a key is read with ``json_extract(c.meta, ...)``; on PostgreSQL (``meta`` is
    ``jsonb``) with ``c.meta ->> 'key'`` cast to the type of the compared value, and
    only where the stored JSON value has that type (Chroma's rule: ``5`` never equals
    ``"5"``).  Placeholders are ``?`` (sqlite3) or ``%s`` (psycopg).

    Args:
        where: ``{key: {"$op": value}}``, ``{key: value}`` or ``{"$and"|"$or": [...]}``.
        dialect: ``sqlite`` or ``postgresql``.

    Returns:
        ``(sql, params)``; ``("1", [])`` on SQLite and ``("TRUE", [])`` on PostgreSQL for no restriction.

    Raises:
        KeywordQueryError: an operator or key this translation does not know.
    """
    sql_dialect = _PG if dialect == "postgresql" else _SQLITE
    if not where:
        return sql_dialect.true, []
    params: list[Any] = []
    return _clause(where, params, sql_dialect), params


@dataclass(frozen=True, slots=True)
class _SqlDialect:
    true: str
    mark: str
    postgres: bool


_SQLITE = _SqlDialect(true="1", mark="?", postgres=False)
_PG = _SqlDialect(true="TRUE", mark="%s", postgres=True)


def _clause(where: Mapping[str, Any], params: list[Any], d: _SqlDialect) -> str:
    parts = []
    for key, cond in where.items():
        if key in ("$and", "$or"):
            subs = [_clause(c, params, d) for c in cond]
            parts.append("(" + f" {key[1:].upper()} ".join(subs or [d.true]) + ")")
            continue
        if not _KEY.match(key):
            raise KeywordQueryError(f"filters.key: cannot filter on {key!r}")
        if not isinstance(cond, Mapping):
            cond = {"$eq": cond}
        for op, value in cond.items():
            parts.append(_comparison(key, op, value, params, d))
    return "(" + " AND ".join(parts or [d.true]) + ")"


def _pg_typed(key: str, value: Any) -> tuple[str, str]:
    """``(guard, expression)``: the key's JSON value as the SQL type of ``value``, and the type test.

    Used as ``CASE WHEN guard THEN expression ... END``: only CASE guarantees the cast
    is not evaluated on a value of another type (``AND`` does not short-circuit in SQL).
    """
    if isinstance(value, bool):
        return f"jsonb_typeof(c.meta -> '{key}') = 'boolean'", f"(c.meta ->> '{key}')::boolean"
    if isinstance(value, int | float):
        return f"jsonb_typeof(c.meta -> '{key}') = 'number'", f"(c.meta ->> '{key}')::double precision"
    if isinstance(value, str):
        return f"jsonb_typeof(c.meta -> '{key}') = 'string'", f"(c.meta ->> '{key}') COLLATE \"C\""
    raise KeywordQueryError(f"filters.value: unsupported value {value!r}")


def _comparison(key: str, op: str, value: Any, params: list[Any], d: _SqlDialect) -> str:
    sql_ops = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
    if op not in (*sql_ops, "$ne", "$in", "$nin"):
        raise KeywordQueryError(f"filters.type: unsupported operator {op!r}")
    if not d.postgres:
        col = f"json_extract(c.meta, '$.{key}')"
        if op in sql_ops:
            params.append(value)
            return f"{col} {sql_ops[op]} ?"
        if op == "$ne":  # Chroma: a chunk without the key also matches $ne
            params.append(value)
            return f"({col} IS NULL OR {col} != ?)"
        values = list(value)
        params.extend(values)
        marks = ",".join("?" * len(values)) or "NULL"
        return f"{col} IN ({marks})" if op == "$in" else f"({col} IS NULL OR {col} NOT IN ({marks}))"
    # PostgreSQL: each value compared only with stored values of its own JSON type
    if op in sql_ops or op == "$ne":
        guard, col = _pg_typed(key, value)
        params.append(value)
        test = f"(CASE WHEN {guard} THEN {col} {sql_ops.get(op, '=')} %s ELSE FALSE END)"
        return test if op != "$ne" else f"NOT {test}"
    tests = []
    for v in value:
        guard, col = _pg_typed(key, v)
        params.append(v)
        tests.append(f"(CASE WHEN {guard} THEN {col} = %s ELSE FALSE END)")
    any_of = "(" + " OR ".join(tests or ["FALSE"]) + ")"
    return any_of if op == "$in" else f"NOT {any_of}"


class KeywordIndex:
    """Per-instance FTS5 indexes under one directory.

    Args:
        root: directory holding ``<instance>.sqlite`` files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._tokenizers: dict[str, str] = {}

    # --- connections -----------------------------------------------------------
    def path(self, instance_id: str) -> Path:
        return self.root / f"{instance_id}.sqlite"

    def _conn(self, instance_id: str, *, create: bool = False) -> sqlite3.Connection | None:
        conns: dict[str, sqlite3.Connection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(instance_id)
        if conn is not None:
            return conn
        path = self.path(instance_id)
        if not path.exists():
            if not create:
                return None
            self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        conns[instance_id] = conn
        return conn

    def _ensure_fts(self, conn: sqlite3.Connection, instance_id: str, tokenizer: str | None) -> None:
        """Create the FTS table, or rebuild it when the instance's tokenizer changed."""
        wanted = tokenizer or self._tokenizers.get(instance_id)
        row = conn.execute("SELECT value FROM meta WHERE key='tokenizer'").fetchone()
        current = row[0] if row else None
        wanted = wanted or current or DEFAULT_TOKENIZER
        if wanted not in TOKENIZERS:
            raise KeywordQueryError(f"indexing_options.keyword_tokenizer: must be one of {', '.join(TOKENIZERS)}")
        if current == wanted:
            self._tokenizers[instance_id] = wanted
            return
        logger.info("keyword index %s: tokenizer %s -> %s (rebuilding)", instance_id, current, wanted)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DROP TABLE IF EXISTS fts")
            conn.execute(
                "CREATE VIRTUAL TABLE fts USING fts5(title, text, content='chunks', content_rowid='rowid', "
                f"tokenize='{TOKENIZERS[wanted]}')"
            )
            conn.execute("INSERT INTO fts(fts) VALUES('rebuild')")
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('tokenizer', ?)", (wanted,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._tokenizers[instance_id] = wanted

    def tokenizer(self, instance_id: str) -> str:
        """The tokenizer the instance's index was built with."""
        conn = self._conn(instance_id)
        if conn is None:
            return DEFAULT_TOKENIZER
        row = conn.execute("SELECT value FROM meta WHERE key='tokenizer'").fetchone()
        return row[0] if row else DEFAULT_TOKENIZER

    # --- writes (index owner only) ---------------------------------------------
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
        """Replace all keyword rows of one item (same ids as the vector store)."""
        with self._write_lock:
            conn = self._conn(instance_id, create=True)
            assert conn is not None
            self._ensure_fts(conn, instance_id, tokenizer)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._delete_rows(conn, item_id)
                for cid, text, meta in zip(chunk_ids, texts, metadatas, strict=True):
                    cur = conn.execute(
                        "INSERT INTO chunks(chunk_id, item_id, meta, title, text) VALUES (?,?,?,?,?)",
                        (cid, item_id, json.dumps(dict(meta)), meta.get("title") or "", text),
                    )
                    conn.execute(
                        "INSERT INTO fts(rowid, title, text) VALUES (?,?,?)",
                        (cur.lastrowid, meta.get("title") or "", text),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def delete_item(self, instance_id: str, item_id: str) -> None:
        """Remove an item's rows."""
        with self._write_lock:
            conn = self._conn(instance_id)
            if conn is None:
                return
            self._ensure_fts(conn, instance_id, None)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._delete_rows(conn, item_id)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _delete_rows(conn: sqlite3.Connection, item_id: str) -> None:
        rows = conn.execute("SELECT rowid, title, text FROM chunks WHERE item_id=?", (item_id,)).fetchall()
        for rowid, title, text in rows:
            conn.execute("INSERT INTO fts(fts, rowid, title, text) VALUES('delete', ?, ?, ?)", (rowid, title, text))
        conn.execute("DELETE FROM chunks WHERE item_id=?", (item_id,))

    def drop_instance(self, instance_id: str) -> None:
        """Delete an instance's keyword file."""
        with self._write_lock:
            conn = self._local.__dict__.get("conns", {}).pop(instance_id, None)
            if conn is not None:
                conn.close()
            self._tokenizers.pop(instance_id, None)
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path(instance_id)) + suffix).unlink(missing_ok=True)

    # --- reads -----------------------------------------------------------------
    def count(self, instance_id: str) -> int:
        conn = self._conn(instance_id)
        return 0 if conn is None else int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def query(
        self,
        instance_id: str,
        query: str,
        *,
        n: int,
        where: Mapping[str, Any] | None = None,
        match_mode: str = "or",
    ) -> list[KeywordHit]:
        """Best ``n`` chunks by BM25 (title weighted 2x text) that pass ``where``.

        Raises:
            KeywordQueryError: bad match mode or filter.
        """
        conn = self._conn(instance_id)
        if conn is None:
            return []
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='fts'").fetchone() is None:
            return []
        terms = query_terms(query, tokenizer=self.tokenizer(instance_id))
        if not terms:
            return []
        exprs = self._or_expressions(conn, terms) if match_mode == "or" else [match_expression(terms, match_mode)]
        where_sql, params = where_to_sql(where)
        # rank row ids only (sorting every match with its text and JSON attached cost as much as
        # BM25 itself), then read the best n rows
        ranked = (
            "SELECT fts.rowid, -bm25(fts, 2.0, 1.0) AS score FROM fts"
            + ("" if where_sql == "1" else " JOIN chunks c ON c.rowid = fts.rowid")
            + f" WHERE fts MATCH ? AND {where_sql} ORDER BY score DESC LIMIT ?"
        )
        best: dict[int, float] = {}
        try:
            for expr in exprs:
                for rowid, score in conn.execute(ranked, [expr, *params, n]):
                    best[rowid] = max(score, best.get(rowid, score))
        except sqlite3.OperationalError as exc:  # e.g. a term FTS5 refuses
            logger.warning("keyword query %r failed: %s", exprs, exc)
            return []
        top = sorted(best.items(), key=lambda kv: kv[1], reverse=True)[:n]
        if not top:
            return []
        marks = ",".join("?" * len(top))
        rows = {
            rowid: (cid, text, meta)
            for rowid, cid, text, meta in conn.execute(
                f"SELECT rowid, chunk_id, text, meta FROM chunks WHERE rowid IN ({marks})", [r for r, _ in top]
            )
        }
        hits = []
        for rowid, score in top:
            cid, text, meta = rows[rowid]
            hits.append(KeywordHit(cid, text, json.loads(meta), float(score)))
        return hits

    @staticmethod
    def _or_expressions(conn: sqlite3.Connection, terms: list[str]) -> list[str]:
        """The MATCH expressions an ``or`` query ranks (their best rows merged, each row at its best score).

        All terms OR'ed when they occur in at most :data:`RANK_ALL_ROWS` rows together (exact OR).
        Else terms in more than :data:`COMMON_TERM_SHARE` of the rows are left out (the rarest is
        kept if all are), the rarest of the rest up to :data:`CANDIDATE_SHARE` of the rows (summed)
        are the candidates' terms R and the others M: ``(R) AND (M)`` scores rows holding both with
        every term, ``R`` the rows holding only R terms.  A row's score in the second is at most its
        score in the first, so the merged best ``n`` are exactly the best ``n`` rows holding an R term
        by BM25 over R and M.
        """
        expr = match_expression(terms, "or")
        if len(terms) < 2:
            return [expr]
        try:
            df = {
                t: conn.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", [match_expression([t])]).fetchone()[0]
                for t in terms
            }
        except sqlite3.OperationalError:  # a term FTS5 refuses: let the full query report it
            return [expr]
        if sum(df.values()) <= RANK_ALL_ROWS:
            return [expr]
        total = conn.execute("SELECT count(*) FROM fts_docsize").fetchone()[0]
        rare, kept = split_or_terms(terms, df, total)
        others = kept[len(rare) :]
        r = match_expression(rare, "or")
        return [r] if not others else [f"({r}) AND ({match_expression(others, 'or')})", r]

    def score_ids(self, instance_id: str, query: str, chunk_ids: list[str]) -> dict[str, float]:
        """BM25 of the given chunks for ``query`` (OR of its terms); chunks matching no term are left out."""
        conn = self._conn(instance_id)
        if conn is None or not chunk_ids:
            return {}
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='fts'").fetchone() is None:
            return {}
        terms = query_terms(query, tokenizer=self.tokenizer(instance_id))
        if not terms:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        sql = (
            "SELECT c.chunk_id, -bm25(fts, 2.0, 1.0) FROM fts JOIN chunks c ON c.rowid = fts.rowid"
            f" WHERE fts MATCH ? AND c.chunk_id IN ({marks})"
        )
        try:
            return {cid: float(s) for cid, s in conn.execute(sql, [match_expression(terms, "or"), *chunk_ids])}
        except sqlite3.OperationalError as exc:
            logger.warning("keyword scoring failed: %s", exc)
            return {}


def open_keyword_index(settings: Settings, engine: Engine | None = None) -> KeywordIndex | PgKeywordIndex:
    """The keyword index for these settings: in PostgreSQL when the state database is PostgreSQL,
    else SQLite FTS5 files under the data directory.

    Args:
        settings: service settings (``resolved_database_url``, ``keyword_dir``).
        engine: the state database's engine to share (PostgreSQL); one is created (and the
            schema migrated) if omitted.
    """
    url = settings.resolved_database_url
    if not url.startswith("postgresql"):
        return KeywordIndex(settings.keyword_dir)
    from indexer.keyword_pg import PgKeywordIndex

    if engine is None:
        from indexer import migrations
        from indexer.state import make_engine

        engine = make_engine(url)
        migrations.upgrade(engine)
    return PgKeywordIndex(engine)
