"""Answers for ``/ai-search``: generation through an OpenAI-compatible chat endpoint, or extractive.

Exceptions::

    AnswerError                 (base)
    └── GenerationError         the endpoint failed or answered garbage

* :class:`Generator` posts ``/chat/completions`` to a configured OpenAI-compatible
  server (Ollama, vLLM, llama.cpp server, OpenAI) with ``httpx``: the system prompt
  (the seeds' default unless the instance or request sets one), then one user
  message holding the numbered sources and the question.  The model is asked to
  cite sources as ``[n]``; :func:`sources_block` appends the source list so an
  answer always names where it came from.
* :func:`extractive_answer` needs no model: the best sentences of the top chunks
  (query-word overlap plus the chunk's score), each cited ``[n]``.
* :meth:`Generator.rewrite` turns a query into search terms (query rewriting).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

logger = logging.getLogger(__name__)

#: The seeds' "System prompt" page, generation example (Cloudflare's default).
DEFAULT_SYSTEM_PROMPT = """You are a helpful AI assistant specialized in answering questions using retrieved documents.
Your task is to provide accurate, relevant answers based on the matched content provided.
For each query, you will receive:
User's question/query
A set of matched documents, each containing:
  - File name
  - File content


You should:
1. Analyze the relevance of matched documents
2. Synthesize information from multiple sources when applicable
3. Acknowledge if the available documents don't fully answer the query
4. Format the response in a way that maximizes readability, in Markdown format


Answer only with direct reply to the user question, be concise, omit everything which is not directly relevant, focus on answering the question directly and do not redirect the user to read the content.


If the available documents don't contain enough information to fully answer the query, explicitly state this and provide an answer based on what is available.


Important:
- Cite which document(s) you're drawing information from
- Present information in order of relevance
- If documents contradict each other, note this and explain your reasoning for the chosen answer
- Do not repeat the instructions"""

#: The seeds' "System prompt" page, query-rewriting example.
DEFAULT_REWRITE_PROMPT = """You are a search query optimizer for vector database searches. Your task is to reformulate user queries into more effective search terms.


Given a user's search query, you must:
1. Identify the core concepts and intent
2. Add relevant synonyms and related terms
3. Remove irrelevant filler words
4. Structure the query to emphasize key terms
5. Include technical or domain-specific terminology if applicable


Provide only the optimized search query without any explanations, greetings, or additional commentary.


Constraints:
- Output only the enhanced search terms
- Keep focus on searchable concepts
- Include both specific and general related terms
- Maintain all important meaning from original query"""

EXTRACTIVE_PREFIX = "Extractive answer (no generation model configured):"
NO_RESULTS = "No relevant content was found for this query."
MAX_SOURCES = 5
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+")


class AnswerError(Exception):
    """Base of answer errors."""


class GenerationError(AnswerError):
    """The generation endpoint failed or returned an unusable reply."""


class Hit(Protocol):
    """What an answer needs of a search hit (:class:`indexer.search.SearchHit`)."""

    filename: str
    title: str
    text: str
    score: float
    context: str | None  # the item's `context` metadata, passed to the model

    @property
    def full_text(self) -> str:
        """The chunk with its neighbours (``context_expansion``); the chunk alone otherwise."""


# --- extractive -----------------------------------------------------------------------------
#: Scores each sentence's similarity to the query (cosine in [-1, 1]), e.g. :func:`embedding_similarity`.
SentenceSimilarity = Callable[[Sequence[str]], Sequence[float]]


def extractive_sentences(
    query: str, hits: Sequence[Hit], *, max_sentences: int = 4, similarity: SentenceSimilarity | None = None
) -> list[str]:
    """The best sentences of the top chunks, in source order, each ending with its ``[n]`` citation.

    A sentence scores its chunk's score minus 0.05 per rank below the first chunk, plus its
    similarity to the query: the embedding cosine when ``similarity`` is given (what
    ``/ai-search`` uses; ``bench/extractive.py`` measures both), else the share of the query's
    words it contains.

    Args:
        query: the user's question.
        hits: retrieved chunks, best first.
        max_sentences: how many sentences to keep.
        similarity: scores sentences against the query; None: word overlap.

    Returns:
        Cited sentences (empty when nothing qualifies).
    """
    candidates = [
        (rank, pos, sentence)
        for rank, hit in enumerate(hits[:MAX_SOURCES])
        for pos, sentence in enumerate(s.strip() for s in _SENTENCE.split(hit.text))
        if len(sentence) >= 20
    ]
    if not candidates:
        return []
    if similarity is not None:
        relevance = [float(x) for x in similarity([s for _r, _p, s in candidates])]
    else:
        q_words = {w.lower() for w in _WORD.findall(query) if len(w) > 2}
        relevance = [len(q_words & {w.lower() for w in _WORD.findall(s)}) / (len(q_words) or 1) for _r, _p, s in candidates]
    scored = [(rel + hits[rank].score - 0.05 * rank, rank, pos, s) for rel, (rank, pos, s) in zip(relevance, candidates, strict=True)]
    best = sorted(scored, reverse=True)[:max_sentences]
    best.sort(key=lambda t: (t[1], t[2]))
    return [f"{s} [{rank + 1}]" for _, rank, _, s in best]


def embedding_similarity(embedder: Any, query: str) -> SentenceSimilarity:
    """Cosine of each sentence to ``query`` with the index's embedding model (normalised vectors)."""

    def score(sentences: Sequence[str]) -> Sequence[float]:
        return [float(x) for x in embedder.embed(list(sentences)) @ embedder.embed_query(query)]

    return score


def sources_block(hits: Sequence[Hit]) -> str:
    """``Sources:`` followed by ``[n] title — url`` lines for the top hits."""
    lines = [f"[{i + 1}] {h.title or h.filename} — {h.filename}" for i, h in enumerate(hits[:MAX_SOURCES])]
    return "Sources:\n" + "\n".join(lines)


def extractive_parts(
    query: str, hits: Sequence[Hit], *, max_sentences: int = 4, similarity: SentenceSimilarity | None = None
) -> Iterator[str]:
    """The extractive answer as pieces (prefix, sentences, sources) for streaming; joined by :func:`extractive_answer`."""
    if not hits:
        yield NO_RESULTS
        return
    yield EXTRACTIVE_PREFIX + "\n\n"
    sentences = extractive_sentences(query, hits, max_sentences=max_sentences, similarity=similarity)
    for i, s in enumerate(sentences):
        yield s + (" " if i < len(sentences) - 1 else "")
    yield "\n\n" + sources_block(hits)


def extractive_answer(
    query: str, hits: Sequence[Hit], *, max_sentences: int = 4, similarity: SentenceSimilarity | None = None
) -> str:
    """Best sentences of the top chunks, each with a [n] citation, then the sources (no generation model).

    Args:
        query: the user's question.
        hits: retrieved chunks, best first.
        max_sentences: how many sentences to keep.
        similarity: scores sentences against the query (see :func:`extractive_sentences`).

    Returns:
        The answer text; it starts with :data:`EXTRACTIVE_PREFIX` so it says it is extractive.
    """
    return "".join(extractive_parts(query, hits, max_sentences=max_sentences, similarity=similarity))


# --- generation -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Where and how to generate.

    Attributes:
        base_url: the OpenAI-compatible API root, e.g. ``http://127.0.0.1:11434/v1``.
        model: the chat model name at that endpoint.
        api_key: bearer token, or None.
        timeout: seconds per request.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0


def context_message(query: str, hits: Sequence[Hit]) -> str:
    """The user message: numbered sources (file name + content), then the question."""
    docs = []
    for i, h in enumerate(hits[:MAX_SOURCES]):
        context = f"Context: {h.context}\n" if h.context else ""
        docs.append(f"[{i + 1}] File name: {h.filename}\nTitle: {h.title}\n{context}File content:\n{h.full_text}")
    return (
        "Matched documents:\n\n" + "\n\n".join(docs)
        + f"\n\nCite the documents you use as [n].\n\nUser's question: {query}"
    )


class Generator:
    """A chat client for one OpenAI-compatible endpoint.

    Args:
        config: endpoint, model, key and timeout.
        transport: an ``httpx`` transport (tests), or None for the network.
    """

    def __init__(self, config: GenerationConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._client = httpx.Client(
            base_url=config.base_url.rstrip("/"), headers=headers, timeout=config.timeout, transport=transport
        )

    def close(self) -> None:
        self._client.close()

    def request_body(self, messages: list[dict[str, str]], *, model: str | None = None, stream: bool = False,
                     max_tokens: int | None = None) -> dict[str, Any]:
        """The exact JSON body posted to ``/chat/completions``."""
        body: dict[str, Any] = {"model": model or self.config.model, "messages": messages, "stream": stream}
        if max_tokens:
            body["max_tokens"] = max_tokens
        return body

    def answer_messages(self, query: str, hits: Sequence[Hit], *, system_prompt: str | None = None) -> list[dict[str, str]]:
        """System prompt + sources-and-question message."""
        return [
            {"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": context_message(query, hits)},
        ]

    def complete(self, messages: list[dict[str, str]], *, model: str | None = None, max_tokens: int | None = None) -> str:
        """One non-streaming chat completion's text.

        Raises:
            GenerationError: transport failure, HTTP error or a reply without text.
        """
        try:
            r = self._client.post("/chat/completions", json=self.request_body(messages, model=model, max_tokens=max_tokens))
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"] or "")
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise GenerationError(f"generation endpoint {self.config.base_url} failed: {exc}") from None

    def stream(self, messages: list[dict[str, str]], *, model: str | None = None) -> Iterator[str]:
        """Tokens of a streaming chat completion (OpenAI SSE ``data:`` lines, ``[DONE]`` ends).

        Raises:
            GenerationError: transport failure or HTTP error.
        """
        body = self.request_body(messages, model=model, stream=True)
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        delta = json.loads(data)["choices"][0].get("delta", {}).get("content")
                    except (ValueError, KeyError, IndexError, AttributeError):
                        continue
                    if delta:
                        yield str(delta)
        except httpx.HTTPError as exc:
            raise GenerationError(f"generation endpoint {self.config.base_url} failed: {exc}") from None

    def answer(self, query: str, hits: Sequence[Hit], *, model: str | None = None, system_prompt: str | None = None) -> str:
        """A generated answer followed by the sources it could cite."""
        if not hits:
            return NO_RESULTS
        text = self.complete(self.answer_messages(query, hits, system_prompt=system_prompt), model=model)
        return text.strip() + "\n\n" + sources_block(hits)

    def rewrite(self, query: str, *, model: str | None = None, prompt: str | None = None) -> str:
        """The query rewritten into search terms (falls back to the query if the reply is empty)."""
        messages = [
            {"role": "system", "content": prompt or DEFAULT_REWRITE_PROMPT},
            {"role": "user", "content": query},
        ]
        text = self.complete(messages, model=model, max_tokens=128).strip()
        return text or query
