"""The state database under test: SQLite, and PostgreSQL from :mod:`tests.services`.

``database_url`` is parametrised over both, so a test taking it (or a fixture built on
it) runs once per database: ``test_x[sqlite]`` and ``test_x[postgres]``.  Each test gets
an empty database of its own.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.state import StateStore
from tests.services import create_database

DATABASES = ["sqlite", "postgres"]
INSTANCE = "site"  # the instance the ``state`` fixture creates
PROCS = 3  # processes racing in run_processes


def new_database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """An empty database of ``kind`` (``sqlite`` | ``postgres``); returns its SQLAlchemy URL."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'state-{uuid.uuid4().hex[:8]}.db'}"
    server = request.getfixturevalue("postgres_url")
    return create_database(server, f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty state database, once on SQLite and once on PostgreSQL."""
    return new_database(request, request.param, tmp_path)


@pytest.fixture()
def state(database_url: str) -> Iterator[StateStore]:
    """A :class:`StateStore` on ``database_url`` holding one web-crawler instance, :data:`INSTANCE`."""
    store = StateStore(database_url)
    store.create_instance(INSTANCE, "web-crawler", "http://example.test", {"id": INSTANCE})
    yield store
    store.close()


def run_processes(target: Callable[..., Any], url: str, *args: Any) -> list[Any]:
    """Run ``target(url, barrier, *args)`` in :data:`PROCS` spawned processes at once; returns what each returned.

    ``barrier`` (60 s timeout) lets the processes start their race together. Fails the test
    with the exceptions if any process raised.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCS, timeout=60)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(queue, target, url, barrier, *args)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            p.kill()
    assert [error for ok, error in results if not ok] == []
    return [value for _, value in results]


def _child(queue: Any, target: Callable[..., Any], *args: Any) -> None:
    try:
        queue.put((True, target(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported by run_processes
        queue.put((False, f"failed: {exc!r}"))
