"""Hybrid retrieval through the API: retrieval types, fusion, filters in both indexes, scores, reranking.

Real model, real Chroma, real FTS5: chunks are embedded by the service's embedder and
stored the way the pipeline stores them (``VectorStore.replace_item``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import API_TOKEN, make_settings

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

PAGES = {
    "errors": ("docs.example.com/support/", "Error codes",
               ["Error QX-7731 means the upload quota is exhausted; wait for the monthly reset.",
                "Error QX-1002 means the token expired; sign in again."]),
    "battery": ("docs.example.com/guide/", "Battery care",
                ["Charge the battery fully before first use and store it at half charge.",
                 "Lithium cells age faster when kept hot; avoid leaving the device in a car."]),
    "hiking": ("blog.example.com/", "Weekend hike",
               ["We walked along the ridge and watched the sunset over the valley.",
                "The trail was muddy after the rain, so bring waterproof boots."]),
    "regex": ("docs.example.com/api/", "Regular expressions",
              ["re.findall(pattern, string) returns all non-overlapping matches as a list of strings.",
               "re.sub replaces every match of the pattern with a replacement string."]),
}


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("hybrid"), model_dir)
    with TestClient(create_app(settings)) as c:
        for iid, body in (("vec", {}), ("hyb", {"index_method": {"vector": True, "keyword": True}})):
            r = c.post(f"{ACCOUNT}/instances", json={"id": iid, "type": "r2", **body}, headers=AUTH)
            assert r.status_code == 200, r.text
        service = c.app.state.service
        for iid in ("vec", "hyb"):
            for item, (folder, title, chunks) in PAGES.items():
                vectors = service.embedder.embed([f"{title}\n\n{t}" for t in chunks])
                metas = [{"item_id": item, "filename": f"https://{folder}{item}.html", "folder": folder,
                          "timestamp": 1_700_000_000_000, "title": title, "chunk": i} for i in range(len(chunks))]
                service.vectors.replace_item(iid, item, chunks, vectors, metas)
        yield c


def search(client: TestClient, query: str, instance: str = "vec", **body: Any) -> list[dict[str, Any]]:
    r = client.post(f"{ACCOUNT}/instances/{instance}/search", json={"query": query, **body}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["result"]["data"]


def opts(**retrieval: Any) -> dict[str, Any]:
    return {"ai_search_options": {"retrieval": retrieval}}


def test_keyword_mode_finds_exact_codes(client: TestClient) -> None:
    data = search(client, "QX-7731", **opts(retrieval_type="keyword", keyword_match_mode="and"))
    assert data[0]["content"][0]["text"].startswith("Error QX-7731")
    assert len(data) == 1  # keyword mode returns only chunks matching the terms ("qx" AND "7731")


def test_hybrid_puts_the_exact_match_first_and_keeps_semantic_hits(client: TestClient) -> None:
    data = search(client, "what does QX-7731 mean", **opts(retrieval_type="hybrid", keyword_match_mode="or"))
    assert data[0]["content"][0]["text"].startswith("Error QX-7731")
    data = search(client, "how should I look after lithium cells", **opts(retrieval_type="hybrid"))
    assert data[0]["filename"].endswith("battery.html")


def test_instance_index_method_makes_hybrid_the_default(client: TestClient) -> None:
    kw_only = search(client, "QX-7731 quota", "hyb", **opts(retrieval_type="keyword"))
    default = search(client, "QX-7731 quota", "hyb")
    assert default[0]["content"][0]["id"] == kw_only[0]["content"][0]["id"]
    assert len(default) > len(kw_only)  # vectors contributed too


@pytest.mark.parametrize("rtype", ["vector", "keyword", "hybrid"])
@pytest.mark.parametrize("fusion", ["rrf", "max"])
def test_scores_are_similarities_in_unit_range_and_threshold_applies(client: TestClient, rtype: str, fusion: str) -> None:
    body = opts(retrieval_type=rtype, fusion_method=fusion, keyword_match_mode="or")
    data = search(client, "battery charge error", **body)
    assert data and all(0.0 <= d["score"] <= 1.0 for d in data)
    cut = sorted(d["score"] for d in data)[len(data) // 2]
    kept = search(client, "battery charge error", ranking_options={"score_threshold": cut}, **body)
    assert kept and all(d["score"] >= cut for d in kept)
    assert len(kept) < len(data) or min(d["score"] for d in data) >= cut


@pytest.mark.parametrize("rtype", ["keyword", "hybrid"])
def test_filters_apply_in_both_indexes(client: TestClient, rtype: str) -> None:
    flt = {"type": "eq", "key": "folder", "value": "docs.example.com/guide/"}
    data = search(client, "error battery ridge", filters=flt, **opts(retrieval_type=rtype, keyword_match_mode="or"))
    assert data and {d["attributes"]["folder"] for d in data} == {"docs.example.com/guide/"}
    either = {"type": "or", "filters": [{"type": "eq", "key": "folder", "value": "docs.example.com/support/"},
                                        {"type": "eq", "key": "folder", "value": "blog.example.com/"}]}
    data = search(client, "error battery ridge", filters=either, **opts(retrieval_type=rtype, keyword_match_mode="or"))
    assert {d["attributes"]["folder"] for d in data} == {"docs.example.com/support/", "blog.example.com/"}
    newer = {"type": "gt", "key": "timestamp", "value": 1_700_000_000_000}
    assert search(client, "error battery ridge", filters=newer, **opts(retrieval_type=rtype)) == []


def test_bad_options_are_400_naming_the_field(client: TestClient) -> None:
    r = client.post(f"{ACCOUNT}/instances/vec/search", json={"query": "x", **opts(retrieval_type="fuzzy")}, headers=AUTH)
    assert r.status_code == 400 and "retrieval_type" in r.text
    r = client.post(f"{ACCOUNT}/instances/vec/search", json={"query": "x", **opts(fusion_method="sum")}, headers=AUTH)
    assert r.status_code == 400 and "fusion_method" in r.text


def test_reranking_per_request_scores_in_unit_range(client: TestClient) -> None:
    body = {"ai_search_options": {"retrieval": {"retrieval_type": "hybrid"}, "reranking": {"enabled": True}}}
    data = search(client, "re.findall list of matches", **body)
    assert data[0]["filename"].endswith("regex.html") and "findall" in data[0]["content"][0]["text"]
    scores = [d["score"] for d in data]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    flat = search(client, "re.findall list of matches", reranking={"enabled": True, "match_threshold": scores[0] - 1e-5})
    assert [d["content"][0]["id"] for d in flat] == [data[0]["content"][0]["id"]]


def test_deleted_items_leave_both_indexes(client: TestClient) -> None:
    service = client.app.state.service
    service.vectors.delete_item("vec", "errors")
    for rtype in ("keyword", "hybrid"):
        data = search(client, "QX-7731", **opts(retrieval_type=rtype))
        assert all(not d["filename"].endswith("errors.html") for d in data)


def test_reranking_per_instance_and_request_override(client: TestClient) -> None:
    r = client.post(f"{ACCOUNT}/instances", json={"id": "rr", "type": "r2", "reranking": True,
                                                  "reranking_model": "sitesearch/hybrid-features"}, headers=AUTH)
    assert r.status_code == 200, r.text
    service = client.app.state.service
    folder, title, chunks = PAGES["regex"]
    metas = [{"item_id": "regex", "filename": f"https://{folder}regex.html", "folder": folder, "timestamp": 0,
              "title": title, "chunk": i} for i in range(len(chunks))]
    service.vectors.replace_item("rr", "regex", chunks, service.embedder.embed([f"{title}\n\n{t}" for t in chunks]), metas)
    q = "regular expressions replace every match"
    reranked = {d["content"][0]["id"]: d["score"] for d in search(client, q, "rr")}
    plain = {d["content"][0]["id"]: d["score"] for d in search(client, q, "rr", reranking={"enabled": False})}
    assert reranked.keys() == plain.keys() and reranked != plain  # reranker scores, not cosine
    assert all(0.0 <= s <= 1.0 for s in reranked.values())


def test_onnx_cross_encoder_directory_is_loaded_and_fed(model_dir: Path, tmp_path: Path) -> None:
    """Plumbing only (no cross-encoder weights exist offline): a tiny graph whose logit is the
    number of passage tokens, with the real MiniLM tokenizer, ranks longer passages first."""
    import shutil

    import onnx
    from onnx import TensorProto, helper

    from indexer.rerank import DEFAULT_RERANK_MODEL, FeatureReranker, OnnxCrossEncoder, get_reranker
    from indexer.search import Candidate

    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "t"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 1])
    nodes = [
        helper.make_node("Mul", ["attention_mask", "token_type_ids"], ["m"]),
        helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mf", "axes"], ["logits"], keepdims=1),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "toy-cross-encoder", ins, [out], initializer=[axes])
    d = tmp_path / "toy"
    d.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(d / "model.onnx"))
    shutil.copy(model_dir / "tokenizer.json", d / "tokenizer.json")

    enc = get_reranker("@cf/baai/bge-reranker-base", bm25=lambda q, ids: {}, model_dir=d)
    assert isinstance(enc, OnnxCrossEncoder)
    assert isinstance(get_reranker(DEFAULT_RERANK_MODEL, bm25=lambda q, ids: {}, model_dir=d), FeatureReranker)
    assert isinstance(get_reranker("@cf/baai/bge-reranker-base", bm25=lambda q, ids: {}), FeatureReranker)
    cands = [Candidate("a", "short", {}), Candidate("b", "a much longer passage with many more tokens in it", {})]
    ranked = enc.rerank("query", cands)
    assert [c.chunk_id for c in ranked] == ["b", "a"]
    assert all(0.5 < c.fused < 1.0 for c in ranked)
