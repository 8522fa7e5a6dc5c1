"""Chunker: sizes in the real model's tokens, overlap, and paragraph / sentence / token boundaries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from indexer.chunker import Chunk, chunk_sections
from indexer.embedder import Embedder

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return Embedder(model_dir, threads=1)


def sections(embedder: Embedder, text: str, size: int, overlap: int = 0) -> list[Chunk]:
    return chunk_sections(text, chunk_size=size, overlap_pct=overlap, count_tokens=embedder.count_tokens,
                          token_offsets=embedder.tokenize_offsets)


def chunk(embedder: Embedder, text: str, size: int, overlap: int = 0) -> list[str]:
    return [c.text for c in sections(embedder, text, size, overlap)]


def sentence(i: int, words: int = 12) -> str:
    """A unique sentence: ``S<i>`` then ``words`` filler words and a full stop."""
    filler = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))
    return f"Sentence s{i} says {filler}."


def document(paragraphs: int, sentences: int, words: int = 12) -> str:
    n = 0
    paras = []
    for _ in range(paragraphs):
        paras.append(" ".join(sentence(n + k, words) for k in range(sentences)))
        n += sentences
    return "\n\n".join(paras)


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("overlap", [0, 10, 30])
def test_chunks_fit_chunk_size_in_model_tokens(embedder: Embedder, size: int, overlap: int) -> None:
    text = document(paragraphs=6, sentences=9) + "\n\n" + " ".join(WORDS * 30)  # incl. one unpunctuated run
    chunks = chunk(embedder, text, size, overlap)
    assert len(chunks) > 3
    for c in chunks:
        assert c and c == c.strip()
        assert embedder.count_tokens(c) <= size, (size, embedder.count_tokens(c), c[:80])


def test_no_text_is_lost_and_order_is_kept(embedder: Embedder) -> None:
    text = document(paragraphs=5, sentences=8)
    chunks = chunk(embedder, text, 64, 0)
    ids = [int(m) for c in chunks for m in re.findall(r"\bs(\d+)\b", c)]
    assert ids == list(range(40))  # every sentence once, in order, with no overlap


def test_small_paragraphs_are_joined_and_never_split(embedder: Embedder) -> None:
    paras = [" ".join(sentence(3 * p + k, 6) for k in range(3)) for p in range(6)]
    per_para = max(embedder.count_tokens(p) for p in paras)
    size = 2 * per_para + 4  # room for two paragraphs, never three
    chunks = chunk(embedder, "\n\n".join(paras), size, 0)
    assert chunks == ["\n\n".join(paras[i : i + 2]) for i in range(0, 6, 2)]


def test_long_paragraph_splits_at_sentence_ends(embedder: Embedder) -> None:
    para = " ".join(sentence(i) for i in range(30))  # one paragraph, far over 64 tokens
    chunks = chunk(embedder, para, 64, 0)
    assert len(chunks) > 3
    for c in chunks:
        assert c.startswith("Sentence s") and c.endswith("."), c


def test_overlap_repeats_trailing_sentences(embedder: Embedder) -> None:
    para = " ".join(sentence(i, 3) for i in range(40))  # short sentences: overlap can use whole ones
    plain = chunk(embedder, para, 64, 0)
    overlapped = chunk(embedder, para, 64, 30)
    assert len(overlapped) > len(plain)
    budget = 64 * 30 // 100
    for prev, nxt in zip(overlapped, overlapped[1:]):
        a = [int(x) for x in re.findall(r"\bs(\d+)\b", prev)]
        b = [int(x) for x in re.findall(r"\bs(\d+)\b", nxt)]
        shared = [i for i in b if i in a]
        assert shared, (prev, nxt)  # some trailing sentences are repeated...
        assert shared == b[: len(shared)] == a[-len(shared) :]  # ...as a suffix of prev / prefix of next
        repeated = " ".join(sentence(i, 3) for i in shared)
        assert embedder.count_tokens(repeated) <= budget  # ...worth at most overlap_pct of chunk_size
    for prev, nxt in zip(plain, plain[1:]):
        assert set(re.findall(r"s\d+\b", prev)).isdisjoint(re.findall(r"s\d+\b", nxt))


def test_huge_single_sentence_is_split_by_tokens(embedder: Embedder) -> None:
    words = [f"{WORDS[i % len(WORDS)]}{i}" for i in range(900)]  # one "sentence", no punctuation
    text = " ".join(words)
    chunks = chunk(embedder, text, 100, 10)
    assert len(chunks) >= 5
    for c in chunks:
        assert embedder.count_tokens(c) <= 100
    # Windows advance through the text in order and cover it all, each overlapping the last.
    assert chunks[0].startswith(words[0]) and chunks[-1].endswith(words[-1])
    starts = [text.index(c) for c in chunks]
    assert starts == sorted(starts)
    for c, start, nxt in zip(chunks, starts, starts[1:]):
        assert nxt < start + len(c)  # overlap: the next window starts before this one ends


def test_token_windows_without_overlap_tile_the_sentence(embedder: Embedder) -> None:
    text = " ".join(f"{WORDS[i % len(WORDS)]}" for i in range(500))
    chunks = chunk(embedder, text, 50, 0)
    assert " ".join(chunks).split() == text.split()


@pytest.mark.parametrize("text", ["", "   ", "\n\n\n", " \n \n\t"])
def test_empty_input_gives_no_chunks(embedder: Embedder, text: str) -> None:
    assert chunk(embedder, text, 64, 10) == []


def test_short_text_is_one_chunk(embedder: Embedder) -> None:
    assert chunk(embedder, "  # Title\n\nJust one line.  ", 256, 10) == ["# Title\n\nJust one line."]


def test_invalid_chunk_size_is_rejected(embedder: Embedder) -> None:
    with pytest.raises(ValueError):
        chunk(embedder, "text", 0)


def test_split_paragraph_keeps_closing_quotes_and_brackets(embedder: Embedder) -> None:
    para = " ".join(f'Item {i} said "halt now, {WORDS[i % 26]}." Then (see note {i}.) it went on.' for i in range(20))
    chunks = chunk(embedder, para, 48, 0)
    assert len(chunks) > 2
    assert " ".join(chunks) == para  # nothing dropped: every quote and bracket is still there


def test_split_paragraph_keeps_line_breaks(embedder: Embedder) -> None:
    lines = [f"- step {i}: tighten bolt {WORDS[i % 26]} to the listed torque" for i in range(40)]
    chunks = chunk(embedder, "\n".join(lines), 64, 0)  # one Markdown list, far over 64 tokens
    assert len(chunks) > 2
    assert "\n".join(chunks).split("\n") == lines  # lines stay lines, none merged or lost


def test_each_chunk_knows_the_headings_of_the_section_it_starts_in(embedder: Embedder) -> None:
    # every paragraph names its section ("in A B"), so the expected headings can be read off each chunk
    layout = [(1, "Guide"), (2, "Install"), (3, "Linux"), (3, "Windows"), (2, "Usage"), (4, "Deep"), (2, "Faq")]
    parts, n = [], 0
    for level, name in layout:
        parts.append("#" * level + " " + name)
        for _ in range(3):
            parts.append(f"In {name} " + sentence(n, 20))
            n += 1
    expected = {"Guide": ("Guide",), "Install": ("Guide", "Install"), "Linux": ("Guide", "Install", "Linux"),
                "Windows": ("Guide", "Install", "Windows"), "Usage": ("Guide", "Usage"),
                "Deep": ("Guide", "Usage", "Deep"), "Faq": ("Guide", "Faq")}
    chunks = sections(embedder, "\n\n".join(parts), 64)
    assert len(chunks) > 7
    for c in chunks:
        first = c.text.split("\n\n")[0]
        if first.startswith("#"):  # opens with a heading: its parents are the section
            name = first.lstrip("# ")
            assert c.headings == expected[name][:-1], (first, c.headings)
        else:
            assert c.headings == expected[first.split()[1]], (first, c.headings)


def test_hash_lines_in_fenced_code_are_not_headings(embedder: Embedder) -> None:
    text = "## Real\n\n```python\n# a comment\n\n## still code\nx = 1\n```\n\nAfter the code " + sentence(1, 30)
    chunks = sections(embedder, text, 24)
    assert any("## still code" in c.text for c in chunks)
    assert [c.headings for c in chunks] == [()] + [("Real",)] * (len(chunks) - 1)


def test_embedding_input_puts_title_and_section_first() -> None:
    from indexer.extract import embedding_input

    headings = ["[`re`](http://x/re.html#module-re) — Regex", "Module *Contents*", "Functions"]
    text = "See [`re.findall`](http://x/re.html#re.findall)."
    assert embedding_input("re — Regex", headings, text) == "re — Regex > Module Contents > Functions\n\nSee `re.findall`."
    assert embedding_input("", [], text) == "See `re.findall`."
    assert embedding_input("", ["Intro"], "x") == "Intro\n\nx"
