"""Raw page store: every fetched page's bytes, URL, status and headers, on local disk.

Our counterpart of the R2 bucket Cloudflare keeps for a Website instance.  Files
are named by the item id (a UUID), never by anything a client or a site sends, so
nothing can escape the store's directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass
class RawPage:
    """A stored fetch result."""

    url: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    fetched_at: float = field(default_factory=time.time)
    content_type: str = ""


class RawStore:
    """Stores raw fetched bodies under ``root/<instance>/<id[:2]>/<id>.{body,json}``.

    Args:
        root: the store directory (``<data_dir>/pages``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _paths(self, instance_id: str, item_id: str) -> tuple[Path, Path]:
        for part in (instance_id, item_id):
            if not _SAFE_NAME.match(part):
                raise ValueError(f"unsafe store name: {part!r}")
        folder = self.root / instance_id / item_id[:2]
        return folder / f"{item_id}.body", folder / f"{item_id}.json"

    def put(self, instance_id: str, item_id: str, page: RawPage) -> Path:
        """Write a page atomically; returns the body path."""
        body_path, meta_path = self._paths(instance_id, item_id)
        body_path.parent.mkdir(parents=True, exist_ok=True)
        meta = asdict(page)
        meta.pop("body")
        _atomic_write(body_path, page.body)
        _atomic_write(meta_path, json.dumps(meta).encode())
        return body_path

    def get(self, instance_id: str, item_id: str) -> RawPage | None:
        """Read a stored page, or None if it is not there."""
        body_path, meta_path = self._paths(instance_id, item_id)
        try:
            meta = json.loads(meta_path.read_bytes())
            body = body_path.read_bytes()
        except FileNotFoundError:
            return None
        return RawPage(body=body, **meta)

    def exists(self, instance_id: str, item_id: str) -> bool:
        """Whether this store holds the page (a stat, not a read)."""
        return self._paths(instance_id, item_id)[1].exists()

    def delete(self, instance_id: str, item_id: str) -> None:
        for path in self._paths(instance_id, item_id):
            path.unlink(missing_ok=True)

    def drop_instance(self, instance_id: str) -> None:
        """Remove every stored page of an instance."""
        import shutil

        if not _SAFE_NAME.match(instance_id):
            raise ValueError(f"unsafe store name: {instance_id!r}")
        shutil.rmtree(self.root / instance_id, ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
