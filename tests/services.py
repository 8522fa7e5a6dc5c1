"""Real external services for the scale-out tests, started on loopback by the tests.

Redis (Debian's ``redis-server``), PostgreSQL (Debian's ``postgresql``; ``initdb`` in a
temporary directory, run as the ``postgres`` user when we are root) and a Chroma
server (``chroma run`` from the installed ``chromadb``).  ``make test`` installs the
Debian packages.  When a binary is missing the fixture skips, unless
``SITESEARCH_REQUIRE_SERVICES=1`` (set by ``make test``), where it fails instead, so CI
can never pass by skipping.

Import the fixtures in a test module with ``from tests.services import redis_url``
(etc.) or use them through ``conftest.py``, which re-exports them. The helpers at the
end start our own processes (crawl workers) the way a user runs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.config import Settings, settings_env

REPO = Path(__file__).resolve().parent.parent
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing(what: str) -> None:
    message = f"{what} is not installed (make test installs it)"
    if os.environ.get("SITESEARCH_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server (kill it after 15 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh Redis server on loopback (no persistence); yields ``redis://127.0.0.1:PORT/0``."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def _as_postgres(cmd: list[str]) -> list[str]:
    """Run a PostgreSQL server command as the ``postgres`` user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def start_postgres(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a fresh PostgreSQL cluster in ``root`` on loopback (trust auth); returns the server and its URL.

    ``root`` must be readable by the ``postgres`` user (not under pytest's private tmp dir)
    when we are root. Stop the server with :func:`stop`.
    """
    bindir = PG_BIN_DIRS[0]
    datadir = root / "data"
    sockdir = root / "sock"
    sockdir.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockdir, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        _as_postgres(
            [
                str(bindir / "postgres"),
                "-D", str(datadir),
                "-p", str(port),
                "-k", str(sockdir),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "max_connections=200",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, "postgres")
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        _wait_pg_ready(url)
    except BaseException:
        stop(proc)
        raise
    return proc, url


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh PostgreSQL cluster on loopback (trust auth); yields a ``postgresql+psycopg://`` URL.

    Each test that needs an empty database should create its own with :func:`create_database`.
    """
    if not PG_BIN_DIRS or not (PG_BIN_DIRS[0] / "initdb").exists():
        _missing("postgresql")
    # not under pytest's tmp dir: that is private to us (0700) and the server runs as `postgres`
    root = Path(tempfile.mkdtemp(prefix="sitesearch-pg-"))
    proc, url = start_postgres(root)
    try:
        yield url
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _wait_pg_ready(url: str, timeout: float = 30.0) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("select 1"))
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


def create_database(server_url: str, name: str) -> str:
    """Create an empty database ``name`` on the server of ``server_url``; returns its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Chroma server (``chroma run``) on loopback with its own data dir; yields ``http://127.0.0.1:PORT``."""
    binary = Path(sys.executable).with_name("chroma")
    if not binary.exists():
        _missing("chroma (the chromadb package's server)")
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen(
        [str(binary), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        _wait_port(port, proc, "chroma run")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


# --- our own processes ------------------------------------------------------------------------------
def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a sitesearch process for ``settings`` (this process's SITESEARCH_* left out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITESEARCH_")}
    env.update(settings_env(settings))
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


def start_crawl_worker(settings: Settings, instance_id: str, log: Path, *scrapy_settings: str,
                       **extra: str) -> subprocess.Popen[bytes]:
    """``scrapy crawl site -a instance=ID [-s NAME=VALUE ...]`` in the repo, output to ``log``."""
    cmd = [sys.executable, "-m", "scrapy", "crawl", "site", "-a", f"instance={instance_id}"]
    for setting in scrapy_settings:
        cmd += ["-s", setting]
    return subprocess.Popen(cmd, cwd=REPO, env=service_env(settings, **extra), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def wait_exit(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float) -> None:
    """Wait for every process to exit 0 within ``timeout`` s in all (else kill them all and fail with the log)."""
    deadline = time.monotonic() + timeout
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"{log.name}: still running after {timeout} s: {log.read_text()[-3000:]}") from None
        assert proc.returncode == 0, f"{log.name}: {log.read_text()[-3000:]}"
