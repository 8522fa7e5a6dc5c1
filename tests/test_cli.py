"""The ``sitesearch`` command refuses bad settings with one line per variable and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SITESEARCH_")}
    clean.update(SITESEARCH_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, env=clean, capture_output=True,
                          text=True, timeout=60)


def test_bad_settings_name_each_variable(tmp_path: Path) -> None:
    r = run_cli(tmp_path, "serve", "--port", "1", SITESEARCH_MAX_REQUEST_BYTES="5", SITESEARCH_SEARCH_THREADS="abc")
    assert r.returncode == 2
    lines = {line.split(": ")[1]: line for line in r.stderr.strip().splitlines()}
    assert set(lines) == {"SITESEARCH_SEARCH_THREADS", "SITESEARCH_MAX_REQUEST_BYTES"}, r.stderr
    assert "'abc'" in lines["SITESEARCH_SEARCH_THREADS"] and "1024" in lines["SITESEARCH_MAX_REQUEST_BYTES"]
    assert "Traceback" not in r.stderr


def test_an_unsupported_database_url_is_one_line(tmp_path: Path) -> None:
    r = run_cli(tmp_path, "db", "current", SITESEARCH_DATABASE_URL="mysql://x@localhost/db")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_scrapy_crawl_names_a_bad_variable_too(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SITESEARCH_")}
    clean.update(SITESEARCH_DATA_DIR=str(tmp_path / "data"), SITESEARCH_DOWNLOAD_TIMEOUT="soon")
    r = subprocess.run([sys.executable, "-m", "scrapy", "crawl", "site", "-a", "instance=x"], cwd=REPO, env=clean,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip().startswith("sitesearch: SITESEARCH_DOWNLOAD_TIMEOUT: ") and "'soon'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
