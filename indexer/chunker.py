"""Recursive chunking: paragraphs, then sentences, then token windows.

Sizes are counted in the embedding model's own tokens.  Adjacent chunks share
``overlap_pct`` percent of ``chunk_size`` tokens, taken from whole trailing
pieces of the previous chunk where possible.  Each chunk also knows the Markdown
headings in effect where it starts (its section), so the embedder can be told
which part of the page a chunk in the middle of a long section belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_CHUNK_SIZE = 256  # tokens
DEFAULT_CHUNK_OVERLAP = 10  # percent
MIN_CHUNK_SIZE = 64  # tokens
MAX_CHUNK_OVERLAP = 30  # percent

_PARAGRAPHS = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? (optionally followed by a closing quote/bracket, kept with it) before
# whitespace, or at a single line break (lists, headings, table rows).
_SENTENCES = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+|\n")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")  # ATX heading line
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")

CountTokens = Callable[[str], int]
TokenOffsets = Callable[[str], Sequence[tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A chunk's text and the headings (outermost first) of the section it starts in."""

    text: str
    headings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    tokens: int
    sep: str  # separator placed before this piece when joined to the previous one
    headings: tuple[str, ...] = ()


def chunk_sections(
    text: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overlap_pct: int = DEFAULT_CHUNK_OVERLAP,
    count_tokens: CountTokens,
    token_offsets: TokenOffsets,
) -> list[Chunk]:
    """Split text into chunks of at most ``chunk_size`` tokens, each with its section headings.

    Args:
        text: Markdown or plain text.
        chunk_size: maximum tokens per chunk.
        overlap_pct: percent of ``chunk_size`` repeated at the start of the next chunk (0-30).
        count_tokens: the model tokenizer's count (no special tokens).
        token_offsets: the model tokenizer's character offsets per token (no special tokens).

    Returns:
        Non-empty chunks in document order.  A chunk's headings are the ATX headings (``#`` to ``######``, outside fenced code)
    in effect where its first paragraph starts: a chunk that opens with a heading has
    that heading in its text and its parents as ``headings``.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    overlap = max(0, min(int(chunk_size * overlap_pct / 100), chunk_size // 2))
    pieces: list[_Piece] = []
    trail: list[tuple[int, str]] = []  # (level, heading) from the outermost
    in_fence = False
    for para in _PARAGRAPHS.split(text):
        para = para.strip()
        if not para:
            continue
        headings = tuple(h for _, h in trail)
        pieces.extend(_split_paragraph(para, chunk_size, overlap, count_tokens, token_offsets, headings))
        for line in para.split("\n"):
            if _FENCE.match(line):
                in_fence = not in_fence
            elif not in_fence and (m := _HEADING.match(line)):
                level = len(m.group(1))
                while trail and trail[-1][0] >= level:
                    trail.pop()
                trail.append((level, m.group(2).strip()))
    return _merge(pieces, chunk_size, overlap)


def _split_paragraph(
    para: str, size: int, overlap: int, count: CountTokens, offsets: TokenOffsets, headings: tuple[str, ...]
) -> list[_Piece]:
    n = count(para)
    if n <= size:
        return [_Piece(para, n, "\n\n", headings)]
    out: list[_Piece] = []
    for sentence, sep in _sentences(para):
        sentence = sentence.strip()
        if not sentence:
            continue
        sep = sep if out else "\n\n"
        m = count(sentence)
        if m <= size:
            out.append(_Piece(sentence, m, sep, headings))
        else:
            for window in _token_windows(sentence, size, overlap, offsets):
                out.append(_Piece(window, count(window), sep, headings))
                sep = " "
    return out


def _sentences(para: str) -> list[tuple[str, str]]:
    """``(sentence, separator before it)`` pairs; a line break stays a line break when rejoined."""
    out: list[tuple[str, str]] = []
    start, sep = 0, ""
    for match in _SENTENCES.finditer(para):
        out.append((para[start : match.start()], sep))
        sep = "\n" if "\n" in match.group() else " "
        start = match.end()
    out.append((para[start:], sep))
    return out


def _token_windows(text: str, size: int, overlap: int, offsets: TokenOffsets) -> list[str]:
    spans = list(offsets(text))
    if not spans:
        return [text]
    stride = max(1, size - overlap)
    windows = []
    for start in range(0, len(spans), stride):
        end = min(start + size, len(spans))
        windows.append(text[spans[start][0] : spans[end - 1][1]].strip())
        if end == len(spans):
            break
    return [w for w in windows if w]


def _merge(pieces: list[_Piece], size: int, overlap: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[_Piece] = []
    total = 0
    for piece in pieces:
        if current and total + piece.tokens > size:
            chunks.append(_join(current))
            current, total = _tail(current, overlap, size - piece.tokens)
        current.append(piece)
        total += piece.tokens
    if current:
        chunks.append(_join(current))
    return [c for c in chunks if c.text]


def _tail(pieces: list[_Piece], overlap: int, room: int) -> tuple[list[_Piece], int]:
    """Trailing whole pieces worth at most ``overlap`` tokens (and fitting ``room``)."""
    budget = min(overlap, room)
    kept: list[_Piece] = []
    total = 0
    for piece in reversed(pieces):
        if total + piece.tokens > budget:
            break
        kept.insert(0, piece)
        total += piece.tokens
    return kept, total


def _join(pieces: list[_Piece]) -> Chunk:
    parts = [pieces[0].text]
    for piece in pieces[1:]:
        parts.append(piece.sep)
        parts.append(piece.text)
    return Chunk("".join(parts).strip(), pieces[0].headings)
