"""Page-level robots directives: ``<meta name="robots">`` and the ``X-Robots-Tag`` header.

robots.txt (:mod:`crawler.robots`) says what may be fetched; these say what a fetched page
allows: ``noindex`` (do not index it) and ``nofollow`` (do not follow its links); ``none``
means both.  Directives addressed to every crawler (``<meta name="robots">``, an
``X-Robots-Tag`` value without an agent) and to ours apply; ours are the names in
:data:`AGENT_TOKENS` (``<meta name="sitesearch" ...>``, ``X-Robots-Tag: sitesearch: noindex``).
Other directives (``noarchive``, ``max-snippet``...) are ignored.  Instances obey them unless
``parse_options.respect_robots_meta`` is false (docs/crawling.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from indexer.extract import HTML_TYPES, head_meta, mime_type

#: Product tokens our crawler answers to, in priority order: our own, then Cloudflare AI Search's
#: crawler (current name, then the pre-2026 one), so rules a site wrote for that crawler hold here.
AGENT_TOKENS: tuple[str, ...] = ("sitesearch", "cloudflare-ai-search", "cloudflare-autorag")
_ALL = "robots"
NOINDEX = "noindex"
NOFOLLOW = "nofollow"
_EXPANDS = {"none": (NOINDEX, NOFOLLOW)}
# directive names that take a value after a colon ("max-snippet: 20"): not agent names
_DIRECTIVE_WORDS = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def _words(value: str) -> list[str]:
    return [w.strip().lower() for w in value.split(",") if w.strip()]


def _expanded(words: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for w in words:
        out.update(_EXPANDS.get(w, (w,)))
    return out & {NOINDEX, NOFOLLOW}


def header_directives(values: Iterable[str]) -> set[str]:
    """``noindex``/``nofollow`` from ``X-Robots-Tag`` values that apply to us.

    ``noindex, nofollow`` applies to every crawler; ``agent: noindex, nofollow`` (and what follows
    it in the same value) to that agent only, as Google reads it.  Repeated headers arrive joined
    by ``, `` and read the same way.
    """
    out: set[str] = set()
    for value in values:
        agent: str | None = None  # None: every crawler
        for part in value.split(","):
            head, sep, rest = part.partition(":")
            name = head.strip().lower()
            if sep and name and " " not in name and name not in _DIRECTIVE_WORDS:
                agent, part = name, rest  # "agent: ..." starts that agent's rules
            if agent is None or agent in AGENT_TOKENS:
                out |= _expanded(_words(part))
    return out


def meta_directives(meta: Iterable[tuple[str, str]]) -> set[str]:
    """``noindex``/``nofollow`` from head ``<meta>`` pairs named ``robots`` or one of our tokens."""
    out: set[str] = set()
    for name, content in meta:
        if name == _ALL or name in AGENT_TOKENS:
            out |= _expanded(_words(content))
    return out


def page_directives(body: bytes, content_type: str | None, headers: Mapping[str, str]) -> set[str]:
    """The directives a fetched page gives our crawler: its ``X-Robots-Tag`` headers and, for
    HTML, its head's robots ``<meta>`` tags.

    Args:
        body: the page.
        content_type: its ``Content-Type``.
        headers: its response headers (repeated headers joined with ``, `` are fine).

    Returns:
        A subset of ``{"noindex", "nofollow"}``.
    """
    values = [v for k, v in headers.items() if k.lower() == "x-robots-tag"]
    out = header_directives(values)
    if mime_type(content_type) in ("", *HTML_TYPES):
        out |= meta_directives(head_meta(body, content_type))
    return out
