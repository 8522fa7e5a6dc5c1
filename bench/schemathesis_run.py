"""Fuzz the live API with schemathesis from its own ``/openapi.json``; report every 5xx.

Starts the product as a user would (uvicorn on 127.0.0.1, embedded storage in a temp
data dir), indexes the bundled demo site through the API, then runs ``schemathesis run``
(child process) with an admin token and the ``not_a_server_error`` check, twice:

1. every operation, ``account_id`` fixed to the configured account, other ids generated
   (unknown ids, validation errors, deletes);
2. every operation except DELETE, ``instance_id`` (and ``/ask``'s ``site``) also fixed to
   the indexed instance, so the generated requests reach search, jobs, items, stats and
   NLWeb answers of a real instance.

Server-side tracebacks of the 5xx (logged by ``server.errors``) are collected in this
process and printed next to schemathesis' failures (JUnit report).  Exit status 1 when
there was any 5xx.  Target: none.

Usage::

    .venv/bin/python bench/schemathesis_run.py [--max-examples 30] [--seed 1] [--report-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from bench._common import DEFAULT_MODELS_DIR  # noqa: E402
from indexer.config import Settings  # noqa: E402
from indexer.onnx_export import ensure_default_model  # noqa: E402
from server.app import create_app  # noqa: E402
from server.devsite import DevSite  # noqa: E402

logger = logging.getLogger(__name__)

DEMO_SITE = REPO / "server" / "demo_site"
INSTANCE = "demo"


class TracebackCollector(logging.Handler):
    """Keeps every ERROR record that carries a traceback (the server's 5xx)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(
                {"logger": record.name, "message": record.getMessage(), "traceback": self.formatException(record.exc_info)}
            )

    def formatException(self, exc_info: Any) -> str:  # noqa: N802 - logging's name
        return logging.Formatter().formatException(exc_info)


@contextmanager
def live_server(settings: Settings) -> Iterator[tuple[str, Any]]:
    """The app under uvicorn on 127.0.0.1 (free port) in a thread; yields (base URL, app).

    uvicorn's own log is silenced (fuzzing sends malformed HTTP on purpose); the app's
    tracebacks still reach :class:`TracebackCollector` through ``server.errors``.
    """
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the API server did not start")
        time.sleep(0.1)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def index_demo_site(base_url: str, token: str, account: str, site: DevSite) -> None:
    """Create the demo instance through the API and wait for its first sync."""
    api = f"/client/v4/accounts/{account}/ai-search/instances"
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        client.post(api, json={"id": INSTANCE, "type": "web-crawler", "source": site.url}).raise_for_status()
        job = client.post(f"{api}/{INSTANCE}/jobs").raise_for_status().json()["result"]
        deadline = time.monotonic() + 300
        while job["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise SystemExit("indexing the demo site did not finish in 5 minutes")
            time.sleep(0.5)
            job = client.get(f"{api}/{INSTANCE}/jobs/{job['id']}").raise_for_status().json()["result"]
        print(f"indexed the demo site: job {job['status']}, counters {job['counters']}", flush=True)


def route_methods(routes: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(METHOD, path)`` an app serves, through included routers."""
    for route in routes:
        sub = getattr(route, "original_router", None)  # FastAPI's included-router wrapper
        if sub is not None:
            yield from route_methods(sub.routes, prefix + getattr(route.include_context, "prefix", ""))
            continue
        for method in sorted(getattr(route, "methods", None) or {"*"}):
            yield method, prefix + getattr(route, "path", "")


UNDOCUMENTED = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/mcp"}  # /mcp speaks JSON-RPC


def check_coverage(base_url: str, app: Any) -> list[str]:
    """``METHOD path`` of every route /openapi.json does not describe (besides docs and /mcp)."""
    spec = httpx.get(f"{base_url}/openapi.json", timeout=30).raise_for_status().json()
    documented = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    return [
        f"{method} {path}" for method, path in route_methods(app.routes)
        if path not in UNDOCUMENTED and method != "HEAD" and (method, path) not in documented
    ]


def run_schemathesis(
    base_url: str, token: str, account: str, *, pass_name: str, fixed: dict[str, str], extra: list[str],
    max_examples: int, seed: int, report_dir: Path,
) -> list[dict[str, str]]:
    """One ``schemathesis run``; returns its failures (operation + message) from the JUnit report."""
    work = report_dir / pass_name
    work.mkdir(parents=True, exist_ok=True)
    config = work / "schemathesis.toml"
    config.write_text("[parameters]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in fixed.items()))
    junit = work / "junit.xml"
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe) if exe.exists() else "schemathesis", "--config-file", str(config), "run", f"{base_url}/openapi.json",
        "-H", f"Authorization: Bearer {token}",
        "--checks", "not_a_server_error",
        "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
        "--request-timeout", "60", "--continue-on-failure",
        "--report", "junit", "--report-junit-path", str(junit), *extra,
    ]
    print(f"\n== schemathesis pass '{pass_name}': {' '.join(c if 'Bearer' not in c else 'Authorization: Bearer ***' for c in cmd)}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, env={**os.environ, "NO_COLOR": "1"}, text=True, capture_output=True)
    (work / "output.txt").write_text(proc.stdout + proc.stderr)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
    print(f"   exit {proc.returncode} in {time.monotonic() - started:.0f} s; last lines:\n{tail}", flush=True)
    failures = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            for node in list(case.findall("failure")) + list(case.findall("error")):
                failures.append({"pass": pass_name, "operation": case.get("name", "?"),
                                 "message": (node.get("message") or "") + "\n" + (node.text or "")})
    elif proc.returncode not in (0, 1):
        failures.append({"pass": pass_name, "operation": "(run)", "message": tail})
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=30, help="test cases per operation and pass")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--report-dir", type=Path, default=None, help="keep reports here (default: a temp dir)")
    args = parser.parse_args(argv)

    collector = TracebackCollector()
    logging.getLogger().addHandler(collector)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    data_dir = Path(tempfile.mkdtemp(prefix="sitesearch-schemathesis-"))
    report_dir = args.report_dir or data_dir / "reports"
    report_dir.mkdir(parents=True, exist_ok=True)
    token = "ss_bench_" + secrets.token_urlsafe(24)
    settings = Settings(data_dir=data_dir / "data", model_dir=ensure_default_model(args.models_dir), api_token=token,
                        sync_on_create=False)  # fuzzed instances must not start crawls of fuzzed sources
    failures: list[dict[str, str]] = []
    try:
        with DevSite(DEMO_SITE) as site, live_server(settings) as (base_url, app):
            index_demo_site(base_url, token, settings.account_id, site)
            missing = check_coverage(base_url, app)
            print(f"routes missing from /openapi.json: {missing or 'none'}", flush=True)
            common = {"base_url": base_url, "token": token, "account": settings.account_id,
                      "max_examples": args.max_examples, "seed": args.seed, "report_dir": report_dir}
            failures += run_schemathesis(pass_name="any-ids", fixed={"path.account_id": settings.account_id},
                                         extra=[], **common)
            failures += run_schemathesis(pass_name="demo-instance",
                                         fixed={"path.account_id": settings.account_id, "path.instance_id": INSTANCE,
                                                "query.site": INSTANCE},
                                         extra=["--exclude-method", "DELETE"], **common)
    finally:
        logging.getLogger().removeHandler(collector)
        if args.report_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)

    print("\n== result")
    print(f"schemathesis failures (5xx): {len(failures)}; server tracebacks: {len(collector.records)}")
    for f in failures:
        print(f"\n--- [{f['pass']}] {f['operation']}\n{f['message'].strip()[:3000]}")
    for rec in collector.records:
        print(f"\n--- server log ({rec['logger']}): {rec['message']}\n{rec['traceback']}")
    if args.report_dir:
        print(f"\nreports: {report_dir}")
    return 1 if failures or collector.records else 0


if __name__ == "__main__":
    raise SystemExit(main())
