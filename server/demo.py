"""``sitesearch demo``: serve the bundled sample site, index it through the API, print a search command.

Everything runs on 127.0.0.1 with the embedded defaults (SQLite + embedded Chroma
under the data directory).  Ctrl-C stops the API server and the sample site.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from indexer.config import get_settings
from indexer.state import StateStore
from server.app import create_app
from server.auth import mint_token
from server.devsite import DevSite

SAMPLE_SITE = Path(__file__).resolve().parent / "demo_site"
DEMO_INSTANCE = "demo"
DEMO_QUERY = "How long does the battery last on a single charge?"


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(*, port: int = 8787, keep_running: bool = True) -> int:
    """Run the demo; returns an exit code."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = settings.api_token
    if not token:
        state = StateStore(settings.resolved_database_url)
        state.delete_tokens_named("demo")
        token, _ = mint_token(state, "demo")
        state.close()

    site = DevSite(SAMPLE_SITE).start()
    _say(f"sample website: {site.url} (bundled in {SAMPLE_SITE})")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    _say("starting the API (the first start builds the ONNX embedding model, a few seconds) ...")
    thread.start()
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/client/v4/accounts/{settings.account_id}/ai-search"
    try:
        while not server.started:
            if not thread.is_alive():
                _say("the API server failed to start; see the log above")
                return 1
            time.sleep(0.2)
        _say(f"API ready on {base} (data in {settings.data_dir.resolve()})")
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            status = _index_sample(client, site.url)
        if status != "completed":
            _say(f"indexing ended as {status}")
            return 1
        _print_instructions(api, token)
        if keep_running:
            _say("Ctrl-C to stop.")
            _wait_for_interrupt()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        site.stop()
        _say("stopped.")
    return 0


def _index_sample(client: httpx.Client, site_url: str) -> str:
    if client.get(f"/instances/{DEMO_INSTANCE}").status_code == 200:
        client.delete(f"/instances/{DEMO_INSTANCE}").raise_for_status()
    r = client.post("/instances", json={"id": DEMO_INSTANCE, "type": "web-crawler", "source": site_url})
    _check(r)
    _say(f"created instance '{DEMO_INSTANCE}' for {site_url}")
    job = _check(client.post(f"/instances/{DEMO_INSTANCE}/jobs"))["result"]
    _say(f"sync job {job['id']} started")
    last = ""
    while True:
        job = _check(client.get(f"/instances/{DEMO_INSTANCE}/jobs/{job['id']}"))["result"]
        c = job["counters"]
        line = (
            f"{job['status']}: discovered {c['discovered']}, fetched {c['fetched']}, indexed {c['indexed']}, "
            f"skipped {c['skipped'] + c['skipped_by_rule']}, errors {c['errors']}"
        )
        if line != last:
            _say(line)
            last = line
        if job["status"] not in ("queued", "running"):
            return str(job["status"])
        time.sleep(0.5)


def _check(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        raise SystemExit(f"[demo] API error {r.status_code}: {r.text}")
    return r.json()


def _print_instructions(api: str, token: str) -> None:
    body = json.dumps({"query": DEMO_QUERY, "max_num_results": 3})
    print(
        "\n[demo] Ready. Search the sample site:\n\n"
        f"curl -s {api}/instances/{DEMO_INSTANCE}/search \\\n"
        f"  -H 'Authorization: Bearer {token}' \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d '{body}'\n",
        flush=True,
    )


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    if os.environ.get("SITESEARCH_DEMO_DEBUG"):
        _say("interrupt received")
