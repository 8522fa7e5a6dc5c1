"""Nothing is sent to a vendor: onnxruntime's usage telemetry stays off.

onnxruntime >= 1.32 on Linux keeps a device id and an event queue under
``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime`` and uploads them to Microsoft
unless ``ORT_DISABLE_TELEMETRY`` is set before it is imported; importing ``indexer`` sets it.
Each check runs in a fresh interpreter with its own empty home, so the files it finds are
the ones that process made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

EMBED = """
import sys
from pathlib import Path
from indexer.embedder import load_embedder
embedder = load_embedder(Path(sys.argv[1]), Path(sys.argv[2]), threads=1)
assert len(embedder.embed_query("how do I sort a list")) == embedder.dim
"""


def _embed_in_fresh_home(tmp_path: Path, model_dir: Path, **env: str) -> list[Path]:
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    clean.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(REPO), **env)
    subprocess.run([sys.executable, "-c", EMBED, str(model_dir), str(tmp_path / "models")], env=clean, cwd=REPO,
                   check=True, timeout=120)
    return sorted(p.relative_to(home) for p in home.rglob("*") if p.is_file())


def test_embedding_leaves_no_telemetry_files(tmp_path: Path, model_dir: Path) -> None:
    assert _embed_in_fresh_home(tmp_path, model_dir) == []


def test_a_user_setting_is_respected(tmp_path: Path, model_dir: Path) -> None:
    """With telemetry explicitly allowed, this onnxruntime does write its files: the check above can fail."""
    import onnxruntime

    if tuple(int(x) for x in onnxruntime.__version__.split(".")[:2]) < (1, 32):
        pytest.skip(f"onnxruntime {onnxruntime.__version__} predates Linux telemetry")
    files = _embed_in_fresh_home(tmp_path, model_dir, ORT_DISABLE_TELEMETRY="0")
    assert any("onnxruntime" in str(p) for p in files), files
