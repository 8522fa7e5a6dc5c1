"""Sentence embeddings with onnxruntime for any ONNX model directory.

A model directory holds ``model.onnx`` and ``tokenizer.json`` (Hugging Face
``tokenizers`` format) and optionally ``sitesearch_model.json`` (written by
:mod:`indexer.onnx_export`). Graph inputs are looked up by name (``input_ids``,
``attention_mask``, optional ``token_type_ids``); a token-level output
``(batch, seq, dim)`` is pooled here (mean over the attention mask, or CLS when the
directory's metadata / ``1_Pooling/config.json`` says so), a ``(batch, dim)`` output is
used as is. Embeddings are always L2-normalised float32.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexerError, ModelBuildError, ModelNotFoundError
from .onnx_export import METADATA_FILE, MODEL_FILE, TOKENIZER_FILE, ensure_default_model

logger = logging.getLogger(__name__)

__all__ = ["Embedder", "IndexerError", "ModelBuildError", "ModelNotFoundError", "load_embedder"]

_FALLBACK_MAX_TOKENS = 512
_SENTENCE_OUTPUTS = ("sentence_embedding", "sentence_embeddings", "embeddings")
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Ops that quantise activations with one scale per tensor: rows of a batch then influence
# each other (cosine between a text embedded alone and in a batch drops to ~0.98).
_DYNAMIC_QUANT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _pooling_mode(model_dir: Path, metadata: dict[str, Any]) -> str:
    """``"mean"`` or ``"cls"``: metadata ``pooling``, else sentence-transformers config, else mean."""
    if metadata.get("pooling") in ("mean", "cls"):
        return str(metadata["pooling"])
    st_config = _read_json(model_dir / "1_Pooling" / "config.json")
    if st_config.get("pooling_mode_cls_token") and not st_config.get("pooling_mode_mean_tokens"):
        return "cls"
    return "mean"


def _pad_id(tokenizer: Any) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def _unpadded(tokenizer: Any, max_length: int | None) -> Any:
    """A copy of ``tokenizer`` without padding, truncating at ``max_length`` (None: never)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    if max_length is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_length=max_length)
    return copy


def _resolve_max_tokens(requested: int | None, metadata: dict[str, Any], tokenizer: Any) -> int:
    truncation = tokenizer.truncation or {}
    value = requested or metadata.get("max_tokens") or truncation.get("max_length") or _FALLBACK_MAX_TOKENS
    limit = metadata.get("max_position_embeddings")
    if limit and value > limit:
        logger.warning("max_tokens %s exceeds the model's %s positions; using %s", value, limit, limit)
        value = limit
    if value < 3:
        raise ValueError(f"max_tokens must be at least 3, got {value}")
    return int(value)


def _make_session(model_path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
        raise ModelBuildError(f"cannot load ONNX model {model_path}: {exc}") from exc


def _input_dtypes(session: Any, model_path: Path) -> dict[str, type[np.integer]]:
    dtypes: dict[str, type[np.integer]] = {}
    for node in session.get_inputs():
        if node.name not in _INPUT_NAMES:
            raise ModelBuildError(
                f"{model_path}: unsupported graph input {node.name!r} (expected {', '.join(_INPUT_NAMES)})"
            )
        dtypes[node.name] = np.int32 if node.type == "tensor(int32)" else np.int64
    if "input_ids" not in dtypes:
        raise ModelBuildError(f"{model_path}: graph has no 'input_ids' input")
    return dtypes


def _has_dynamic_quantization(model_path: Path) -> bool:
    import onnx

    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception as exc:  # the session loaded it, so this is only a missed optimisation
        logger.warning("could not inspect %s (%s); assuming no dynamic quantisation", model_path, exc)
        return False
    return any(node.op_type in _DYNAMIC_QUANT_OPS for node in graph.node)


def _pick_output(session: Any) -> tuple[str, int | None]:
    """Name of the output to use and its static last dimension (None if symbolic)."""
    outputs = session.get_outputs()
    by_name = {o.name: o for o in outputs}
    chosen = next((by_name[n] for n in _SENTENCE_OUTPUTS if n in by_name), None)
    chosen = chosen or next((o for o in outputs if o.shape is not None and len(o.shape) == 3), outputs[0])
    last = chosen.shape[-1] if chosen.shape else None
    return chosen.name, last if isinstance(last, int) else None


class Embedder:
    """Embed texts with an ONNX model directory; safe for concurrent ``embed`` calls.

    Args:
        model_dir: directory with ``model.onnx`` and ``tokenizer.json``.
        threads: onnxruntime intra-op threads (default: all CPUs).
        query_threads: intra-op threads of :meth:`embed_query` (default 1). A short query gains
            nothing from a second thread, and concurrent queries on a shared session would
            oversubscribe the cores (on 2 cores, 4 concurrent searches: p50 ~20% lower with 1).
            When it differs from ``threads``, queries run on a second session of the same graph.
        batch_size: texts per forward pass for float graphs. Dynamically quantised
            (int8) graphs run one text per pass: their per-tensor activation scale would
            make a text's vector depend on its batch neighbours (costs ~5-10% throughput).
        max_tokens: truncation length incl. special tokens (default: metadata, else the
            tokenizer's truncation, else 512).

    Raises:
        ModelNotFoundError: a required file is missing.
        ModelBuildError: the graph cannot be loaded or has unsupported inputs.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        threads: int | None = None,
        query_threads: int | None = 1,
        batch_size: int = 32,
        max_tokens: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        model_path, tokenizer_path = self.model_dir / MODEL_FILE, self.model_dir / TOKENIZER_FILE
        for required in (model_path, tokenizer_path):
            if not required.is_file():
                raise ModelNotFoundError(f"embedding model directory {self.model_dir} has no {required.name}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.metadata = _read_json(self.model_dir / METADATA_FILE)
        configured = _load_tokenizer(tokenizer_path)
        self._max_tokens = _resolve_max_tokens(max_tokens, self.metadata, configured)
        self._pad_id = _pad_id(configured)
        self._counter = _unpadded(configured, None)  # count_tokens / tokenize_offsets
        self._tokenizer = _unpadded(configured, self._max_tokens)  # model input; padded in _run
        self._session = _make_session(model_path, threads)
        self._model_path = model_path
        same = (query_threads or os.cpu_count() or 1) == (threads or os.cpu_count() or 1)
        self._query_threads = query_threads
        self._query_session: Any = self._session if same else None  # made on the first query
        self._query_lock = threading.Lock()
        self._dtypes = _input_dtypes(self._session, model_path)
        self._dynamic_int8 = _has_dynamic_quantization(model_path)
        self._step = 1 if self._dynamic_int8 else batch_size
        self._output, static_dim = _pick_output(self._session)
        self._pooling = _pooling_mode(self.model_dir, self.metadata)
        self._dim = static_dim or int(self.metadata.get("dim") or 0) or self._probe_dim()
        logger.info(
            "loaded embedding model %s from %s (dim %d, max_tokens %d, output %s, batch %d)",
            self.name, self.model_dir, self._dim, self._max_tokens, self._output, self._step,
        )

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self._dim

    @property
    def max_tokens(self) -> int:
        """Truncation length of the model input, including special tokens."""
        return self._max_tokens

    @property
    def name(self) -> str:
        """Model name: the metadata's source name, else the directory name."""
        return str(self.metadata.get("source") or self.model_dir.name)

    @property
    def quantized(self) -> bool:
        """True if the graph is int8-quantised (metadata, else detected in the graph)."""
        return bool(self.metadata.get("quantized", self._dynamic_int8))

    def __repr__(self) -> str:
        return (
            f"Embedder(name={self.name!r}, dim={self._dim}, max_tokens={self._max_tokens}, "
            f"dir={str(self.model_dir)!r})"
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts, batching by similar length; results are in input order.

        Args:
            texts: the texts; each is truncated to ``max_tokens``.

        Returns:
            float32 array of shape ``(len(texts), dim)``, rows L2-normalised.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; use embed_query() for one text")
        texts = list(texts)
        result = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return result
        encodings = self._tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self._step):
            rows = order[start : start + self._step]
            result[rows] = self._run([encodings[i] for i in rows])
        return result

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text on the query session (``query_threads`` intra-op threads).

        Args:
            text: the query.

        Returns:
            float32 vector of shape ``(dim,)``, L2-normalised.
        """
        session = self._query_session
        if session is None:
            with self._query_lock:
                if self._query_session is None:
                    self._query_session = _make_session(self._model_path, self._query_threads)
                session = self._query_session
        return self._run([self._tokenizer.encode(text)], session)[0]

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` without special tokens and without truncation.

        Args:
            text: any text.

        Returns:
            The token count.
        """
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character offsets ``(start, end)`` of each token (no specials, no truncation).

        Args:
            text: any text.

        Returns:
            One ``(start, end)`` pair per token, indexing into ``text``.
        """
        return [(int(a), int(b)) for a, b in self._counter.encode(text, add_special_tokens=False).offsets]

    def _probe_dim(self) -> int:
        return int(self._run([self._tokenizer.encode("dimension probe")]).shape[1])

    def _run(self, encodings: Sequence[Any], session: Any = None) -> np.ndarray:
        """Forward one batch (padded here to its longest member) and normalise."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, enc.attention_mask, enc.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {name: arrays[name].astype(dtype, copy=False) for name, dtype in self._dtypes.items()}
        output = np.asarray((session or self._session).run([self._output], feeds)[0], dtype=np.float32)
        return _l2_normalise(self._pool(output, mask))

    def _pool(self, output: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if output.ndim == 2:
            return output
        if output.ndim != 3:
            raise ModelBuildError(f"{self.model_dir}: unexpected output shape {output.shape}")
        if self._pooling == "cls":
            return output[:, 0]
        weights = mask[..., None].astype(np.float32)
        return (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def load_embedder(model_dir: Path | None, models_dir: Path, **kw: Any) -> Embedder:
    """Load a user-supplied model directory, or the default model (built on first use).

    Args:
        model_dir: an ONNX model directory, or None for the default all-MiniLM-L6-v2.
        models_dir: where the default model is built and cached.
        **kw: passed to :class:`Embedder` (threads, query_threads, batch_size, max_tokens).

    Returns:
        A ready :class:`Embedder`.
    """
    return Embedder(ensure_default_model(models_dir) if model_dir is None else Path(model_dir), **kw)
