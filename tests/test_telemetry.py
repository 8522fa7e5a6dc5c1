"""Nothing is sent to a vendor: onnxruntime's usage telemetry stays off.

onnxruntime >= 1.32 on Linux keeps a device id and an event queue under
``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime`` and uploads them to Microsoft
unless ``ORT_DISABLE_TELEMETRY`` is set before it is imported; importing ``indexer`` sets it.
Each check runs in a fresh interpreter with its own empty home and a minimal environment,
so the files it finds are the ones that process made. The environment is minimal because
onnxruntime also stays quiet when it sees a CI marker (``CI``, ``GITHUB_ACTIONS``, ``TF_BUILD``,
``JENKINS_URL``...), which would make the file check pass on a CI machine whatever our code does.
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
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(home),
             "XDG_CACHE_HOME": str(home / ".cache"), "PYTHONPATH": str(REPO), **env}
    subprocess.run([sys.executable, "-c", EMBED, str(model_dir), str(tmp_path / "models")], env=clean, cwd=REPO,
                   check=True, timeout=120)
    return sorted(p.relative_to(home) for p in home.rglob("*") if p.is_file())


ENV_AT_IMPORT = """
import os, sys
import indexer
assert "onnxruntime" not in sys.modules, "onnxruntime imported before indexer set its environment"
print(os.environ.get("ORT_DISABLE_TELEMETRY", "<unset>"))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("0", "0"), ("1", "1")])
def test_importing_indexer_turns_telemetry_off_unless_the_user_chose(given: str | None, expected: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    if given is not None:
        env["ORT_DISABLE_TELEMETRY"] = given
    out = subprocess.run([sys.executable, "-c", ENV_AT_IMPORT], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == expected


def test_embedding_leaves_no_telemetry_files(tmp_path: Path, model_dir: Path) -> None:
    assert _embed_in_fresh_home(tmp_path, model_dir) == []


def test_a_user_setting_is_respected(tmp_path: Path, model_dir: Path) -> None:
    """With telemetry explicitly allowed, this onnxruntime does write its files: the check above can fail."""
    import onnxruntime

    if tuple(int(x) for x in onnxruntime.__version__.split(".")[:2]) < (1, 32):
        pytest.skip(f"onnxruntime {onnxruntime.__version__} predates Linux telemetry")
    files = _embed_in_fresh_home(tmp_path, model_dir, ORT_DISABLE_TELEMETRY="0")
    assert any("onnxruntime" in str(p) for p in files), files
