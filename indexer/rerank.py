"""Second-stage reranking of retrieval candidates.

Two rerankers, chosen by ``reranking.model``:

* ``sitesearch/hybrid-features`` (the offline default, :class:`FeatureReranker`): a
  scorer that looks at every candidate with signals the first stage does not
  combine: dense cosine, BM25 over the candidate set (normalised by the best
  candidate), the share of the query's word pairs found as exact phrases, and the
  share of query terms in the page title.  No weights are downloaded; it is what
  ``bench/retrieval.py`` measures.
* a cross-encoder configured as ``SITESEARCH_RERANK_MODEL_DIR``
  (:class:`OnnxCrossEncoder`): scores ``(query, chunk)`` pairs, sigmoid of the
  first logit.  The directory is either an ONNX export (``model.onnx`` +
  ``tokenizer.json``) or a Hugging Face ``BertForSequenceClassification`` snapshot
  (``config.json`` + ``model.safetensors`` + ``tokenizer.json``, e.g. the ms-marco
  MiniLM cross-encoders), converted once into the models directory
  (:func:`indexer.onnx_export.build_cross_encoder`, no torch).  No package ships such
  weights, so none is bundled or benchmarked.

Every reranker sets ``Candidate.fused`` to a score in [0, 1] and returns the
candidates best first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from indexer.search import Candidate

logger = logging.getLogger(__name__)

DEFAULT_RERANK_MODEL = "sitesearch/hybrid-features"
_WORD = re.compile(r"\w+")
_STOP = frozenset(
    "a an and are as at be by for from how i in into is it of on or that the this to was what when where which "
    "who why will with do does can get my me you your using use".split()
)
#: feature weights (sum 1.0): chosen on bench/retrieval.py, see docs/search-quality.md
WEIGHTS = {"dense": 0.55, "bm25": 0.25, "phrase": 0.1, "title": 0.1}


class RerankError(ValueError):
    """A reranking model that cannot be loaded."""


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class FeatureReranker:
    """Offline reranker combining dense, BM25, exact-phrase and title-match features.

    Args:
        bm25: returns BM25 scores of chunk ids for a query (``KeywordIndex.score_ids`` bound to an instance).
    """

    name = DEFAULT_RERANK_MODEL

    def __init__(self, bm25: Callable[[str, list[str]], dict[str, float]]) -> None:
        self._bm25 = bm25

    def rerank(self, query: str, candidates: list[Candidate]) -> list[Candidate]:
        """Score and sort candidates (``fused`` ← weighted feature sum in [0, 1])."""
        if not candidates:
            return []
        bm25 = self._bm25(query, [c.chunk_id for c in candidates])
        top = max(bm25.values(), default=0.0) or 1.0
        terms = _terms(query)
        pairs = [f"{a} {b}" for a, b in zip(terms, terms[1:], strict=False)]
        for c in candidates:
            text = " ".join(_WORD.findall(c.text.lower()))
            title_words = set(_WORD.findall(str(c.metadata.get("title") or "").lower()))
            f = {
                "dense": c.cosine or 0.0,
                "bm25": bm25.get(c.chunk_id, 0.0) / top,
                "phrase": (sum(p in text for p in pairs) / len(pairs)) if pairs else 0.0,
                "title": (sum(t in title_words for t in terms) / len(terms)) if terms else 0.0,
            }
            c.features = f
            c.fused = float(sum(WEIGHTS[k] * v for k, v in f.items()))
        return sorted(candidates, key=lambda c: c.fused, reverse=True)


class OnnxCrossEncoder:
    """A cross-encoder exported to ONNX (inputs ``input_ids``, ``attention_mask``[, ``token_type_ids``]).

    Args:
        model_dir: directory with ``model.onnx`` and ``tokenizer.json``.
        max_length: maximum tokens per (query, passage) pair.
        threads: onnxruntime intra-op threads.

    Raises:
        RerankError: the directory lacks the model or tokenizer.
    """

    def __init__(self, model_dir: Path, *, max_length: int = 512, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model, tok = model_dir / "model.onnx", model_dir / "tokenizer.json"
        if not model.is_file() or not tok.is_file():
            raise RerankError(f"reranking.model: {model_dir} needs model.onnx and tokenizer.json")
        self.name = str(model_dir)
        self.tokenizer = Tokenizer.from_file(str(tok))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def scores(self, query: str, passages: list[str]) -> np.ndarray:
        """Relevance of each passage to the query, sigmoid of the first logit, in [0, 1]."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        encs = self.tokenizer.encode_batch([(query, p) for p in passages])
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
            types[i, : len(e.ids)] = e.type_ids
        feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = types
        logits = np.asarray(self.session.run(None, feed)[0], dtype=np.float32).reshape(len(encs), -1)[:, 0]
        return 1.0 / (1.0 + np.exp(-logits))

    def rerank(self, query: str, candidates: list[Candidate]) -> list[Candidate]:
        """Score and sort candidates by the cross-encoder."""
        for c, s in zip(candidates, self.scores(query, [c.text for c in candidates]), strict=True):
            c.fused = float(s)
        return sorted(candidates, key=lambda c: c.fused, reverse=True)


_ONNX_CACHE: dict[str, OnnxCrossEncoder] = {}


def get_reranker(model: str | None, *, bm25: Callable[[str, list[str]], dict[str, float]],
                 model_dir: Path | None = None, cache_dir: Path | None = None) -> Any:
    """The reranker for ``reranking.model``.

    ``sitesearch/hybrid-features`` always selects the feature reranker.  Any other
    name (e.g. Cloudflare's ``@cf/baai/bge-reranker-base``) selects the cross-encoder
    directory configured in settings, if there is one, else the feature reranker.
    Paths never come from requests.

    Args:
        model: the requested or instance model name, or None.
        bm25: BM25 scorer for the feature reranker.
        model_dir: the cross-encoder directory from settings (ONNX export or checkpoint), or None.
        cache_dir: where a checkpoint is converted to ONNX (the models directory); None: next to
            nothing, so a checkpoint directory is refused.

    Raises:
        RerankError: the configured directory is not a usable model.
    """
    if model == DEFAULT_RERANK_MODEL or model_dir is None:
        return FeatureReranker(bm25)
    key = str(model_dir.resolve())
    if key not in _ONNX_CACHE:
        _ONNX_CACHE[key] = OnnxCrossEncoder(onnx_directory(model_dir, cache_dir))
    return _ONNX_CACHE[key]


def onnx_directory(model_dir: Path, cache_dir: Path | None) -> Path:
    """The ONNX directory for a configured cross-encoder: itself, or its one-time conversion.

    Raises:
        RerankError: not a directory, or a checkpoint that cannot be converted.
    """
    from indexer.errors import ModelBuildError
    from indexer.onnx_export import build_cross_encoder, is_checkpoint

    if not model_dir.is_dir():
        raise RerankError(f"reranking.model: {model_dir} is not a model directory")
    if (model_dir / "model.onnx").is_file() or not is_checkpoint(model_dir) or cache_dir is None:
        return model_dir  # OnnxCrossEncoder names what is missing
    try:
        return build_cross_encoder(model_dir, cache_dir / f"cross-encoder-{model_dir.resolve().name}")
    except ModelBuildError as exc:
        raise RerankError(f"reranking.model: {exc}") from None
