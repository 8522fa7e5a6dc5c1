"""A Hugging Face cross-encoder checkpoint (``BertForSequenceClassification``) is converted to ONNX
once and reranks search results.

No package ships cross-encoder weights, so the checkpoint is made here: a small BERT with seeded
random weights, saved as safetensors under the names Hugging Face uses (``bert.`` prefix,
``classifier.*``), with the real MiniLM tokenizer. The converted graph is compared with the NumPy
reference forward pass, and the API's reranked scores with that reference.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.onnx_export import (
    METADATA_FILE,
    MODEL_FILE,
    build_cross_encoder,
    load_source,
    packaged_model_source,
    reference_logits,
)
from indexer.rerank import OnnxCrossEncoder, RerankError, get_reranker
from server.app import create_app
from tests.conftest import API_TOKEN, make_settings

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
HIDDEN, HEADS, LAYERS, INNER, POSITIONS = 32, 2, 2, 64, 512


def make_checkpoint(root: Path, *, classifier: bool = True, seed: int = 7) -> Path:
    """A tiny BertForSequenceClassification snapshot (config.json, model.safetensors, tokenizer.json)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    source = packaged_model_source()
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "bert.embeddings.word_embeddings.weight": rand(vocab, HIDDEN),
        "bert.embeddings.position_embeddings.weight": rand(POSITIONS, HIDDEN),
        "bert.embeddings.token_type_embeddings.weight": rand(2, HIDDEN),
        "bert.embeddings.LayerNorm.weight": 1 + rand(HIDDEN, scale=0.05),
        "bert.embeddings.LayerNorm.bias": rand(HIDDEN, scale=0.05),
        "bert.pooler.dense.weight": rand(HIDDEN, HIDDEN),
        "bert.pooler.dense.bias": rand(HIDDEN),
    }
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}"
        for name, (rows, cols) in {
            "attention.self.query": (HIDDEN, HIDDEN), "attention.self.key": (HIDDEN, HIDDEN),
            "attention.self.value": (HIDDEN, HIDDEN), "attention.output.dense": (HIDDEN, HIDDEN),
            "intermediate.dense": (INNER, HIDDEN), "output.dense": (HIDDEN, INNER),
        }.items():
            w[f"{p}.{name}.weight"], w[f"{p}.{name}.bias"] = rand(rows, cols), rand(rows)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{norm}.weight"], w[f"{p}.{norm}.bias"] = 1 + rand(HIDDEN, scale=0.05), rand(HIDDEN, scale=0.05)
    if classifier:
        w["classifier.weight"], w["classifier.bias"] = rand(1, HIDDEN, scale=1.0), rand(1)
    root.mkdir(parents=True)
    save_file(w, str(root / "model.safetensors"))
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_act": "gelu",
              "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
              "intermediate_size": INNER, "max_position_embeddings": POSITIONS, "vocab_size": vocab,
              "type_vocab_size": 2, "layer_norm_eps": 1e-12, "num_labels": 1}
    (root / "config.json").write_text(json.dumps(config))
    shutil.copy(source / "tokenizer.json", root / "tokenizer.json")
    return root


def expected_scores(checkpoint: Path, query: str, passages: list[str]) -> np.ndarray:
    """sigmoid(first logit) of each (query, passage) pair by the NumPy reference, one pair at a time."""
    from tokenizers import Tokenizer

    config, weights = load_source(checkpoint)
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    out = []
    for passage in passages:
        enc = tokenizer.encode(query, passage)
        ids = np.array([enc.ids], np.int64)
        logits = reference_logits(config, weights, ids, np.ones_like(ids), np.array([enc.type_ids], np.int64))
        out.append(1 / (1 + np.exp(-logits[0, 0])))
    return np.array(out)


PASSAGES = [
    "Hold the reset button for ten seconds to restore the router's factory settings.",
    "The battery lasts nine hours on a full charge.",
    "Fold the flour into the whisked eggs and bake for forty minutes.",
    "Our office is closed on public holidays.",
]
QUERY = "how do I reset the router"


def test_checkpoint_is_converted_once_and_matches_the_reference(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = build_cross_encoder(checkpoint, tmp_path / "models" / "ce")
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["kind"] == "cross-encoder" and meta["labels"] == 1 and meta["max_logit_error"] <= 1e-3
    built = (out / MODEL_FILE).stat().st_mtime_ns
    assert build_cross_encoder(checkpoint, out) == out and (out / MODEL_FILE).stat().st_mtime_ns == built  # reused

    scores = OnnxCrossEncoder(out).scores(QUERY, PASSAGES)
    want = expected_scores(checkpoint, QUERY, PASSAGES)
    assert np.abs(scores - want).max() < 1e-4, (scores, want)
    assert np.ptp(want) > 0.05  # the pairs really score differently, so the comparison means something


def test_get_reranker_converts_a_checkpoint_directory(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "ms-marco-tiny")
    reranker = get_reranker("@cf/baai/bge-reranker-base", bm25=lambda q, ids: {}, model_dir=checkpoint,
                            cache_dir=tmp_path / "models")
    assert isinstance(reranker, OnnxCrossEncoder)
    assert (tmp_path / "models" / "cross-encoder-ms-marco-tiny" / MODEL_FILE).is_file()


def test_a_checkpoint_without_a_classifier_is_refused_by_name(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "encoder-only", classifier=False)
    with pytest.raises(RerankError, match="not a BertForSequenceClassification checkpoint .*classifier.weight"):
        get_reranker("@cf/baai/bge-reranker-base", bm25=lambda q, ids: {}, model_dir=checkpoint,
                     cache_dir=tmp_path / "models")
    assert not (tmp_path / "models" / "cross-encoder-encoder-only").exists()  # nothing half-built left


@pytest.fixture(scope="module")
def api(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    checkpoint = make_checkpoint(tmp_path_factory.mktemp("ce") / "ckpt", seed=11)
    settings = make_settings(tmp_path_factory.mktemp("rerank-api"), model_dir, rerank_model_dir=checkpoint)
    with TestClient(create_app(settings)) as client:
        assert (settings.models_dir / "cross-encoder-ckpt" / MODEL_FILE).is_file()  # converted at start-up
        r = client.post(f"{ACCOUNT}/instances", json={"id": "docs", "type": "r2"}, headers=AUTH)
        assert r.status_code == 200, r.text
        service = client.app.state.service
        for i, text in enumerate(PASSAGES):
            meta = {"item_id": f"p{i}", "filename": f"p{i}.md", "folder": "", "title": "", "chunk": 0, "timestamp": 0}
            service.vectors.replace_item("docs", f"p{i}", [text], service.embedder.embed([text]), [meta])
        yield client, checkpoint


def test_search_with_reranking_uses_the_converted_cross_encoder(api: tuple[TestClient, Path]) -> None:
    client, checkpoint = api
    body = {"query": QUERY, "max_num_results": 4,
            "ai_search_options": {"reranking": {"enabled": True, "model": "@cf/baai/bge-reranker-base"}}}
    r = client.post(f"{ACCOUNT}/instances/docs/search", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()["result"]["data"]
    want = dict(zip(PASSAGES, expected_scores(checkpoint, QUERY, PASSAGES), strict=True))
    got = [(d["content"][0]["text"], d["score"]) for d in data]
    assert [t for t, _ in got] == sorted(want, key=want.__getitem__, reverse=True)  # the cross-encoder's order
    assert all(abs(score - want[text]) < 1e-4 for text, score in got), (got, want)
