"""sitesearch indexer: state, extraction, chunking, embeddings and the vector store.

Shared by the crawler and the server (dependency direction: crawler → indexer ← server).

Importing this package turns off onnxruntime's usage telemetry (``ORT_DISABLE_TELEMETRY=1``,
unless the environment already sets it): onnxruntime >= 1.32 on Linux otherwise keeps a device
id and an event queue under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` and uploads them
to Microsoft. A self-hosted search service sends nothing to a vendor. onnxruntime reads the
variable when it is imported, and every use of it here is imported through this package;
child processes (crawler jobs) inherit it.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
