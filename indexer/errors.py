"""Exceptions raised by the indexer package.

Hierarchy::

    IndexerError(Exception)          base class: catch this to handle any indexer failure
    ├── ModelNotFoundError           model files / weights package missing
    └── ModelBuildError              building or loading an ONNX model failed
"""

from __future__ import annotations

__all__ = ["IndexerError", "ModelBuildError", "ModelNotFoundError"]


class IndexerError(Exception):
    """Base class for all indexer errors."""


class ModelNotFoundError(IndexerError):
    """The embedding model (or the package that ships its weights) is missing."""


class ModelBuildError(IndexerError):
    """An ONNX embedding model could not be built, or a model directory is unusable."""
