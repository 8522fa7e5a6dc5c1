"""robots.txt parsing and matching per RFC 9309.

Approach: our own parser and matcher, not a wrapper around Protego and not a
patched Protego. The logic is a port of the RFC 9309 reference parser
(google/robotstxt): how lines are split, how groups are built and merged,
longest match wins with Allow winning ties, ``*`` and ``$``, the
``/index.htm*`` and long-line rules. On top of that come the Protego
leniencies that its test-suite relies on. Why not Protego itself:

* Protego 0.7 fails 14 of the 145 Google conformance rows. Three of them are
  the contradictory encoding rows described below, which we fail too. The
  other 11 come from its line parser (user-agent values with spaces, lines
  over the length limit) and from how it builds groups (an unknown line ends
  the user-agent list). None of these can be changed through its public API.
  Fixing them means monkey-patching private functions
  (``_extract_directive``, ``_RuleSet``), which would break without warning
  on a Protego upgrade.
* A port is a few hundred lines of plain Python, needs no new dependency,
  and every behaviour is pinned by the conformance tests in
  ``tests/test_robots.py``.

Group selection for our crawler: groups for ``sitesearch`` win, then groups for
Cloudflare AI Search's crawler (``Cloudflare-AI-Search``, then its former name
``Cloudflare-AutoRAG``), then ``*``; see ``ROBOTS_AGENT_TOKENS``.

Where the two conformance sets contradict each other, we follow the RFC
text. The only real contradictions are three Google ``ID_Encoding`` rows
whose input is byte-identical to Protego rows that expect the opposite
result: a raw UTF-8 URL, and an encoded unreserved character such as ``%62``
= ``b``. RFC 9309 §2.2.2 says both sides are percent-encoded and unreserved
escapes are decoded before comparison, which is Protego's answer. See
docs/robots.md.

Canonical form used for matching. It is applied to the rule pattern and to
the URL path + query alike:

* ``%XX`` of an unreserved character (ALPHA DIGIT ``-._~``) is decoded.
* Every other escape stays an escaped octet, and hex case is irrelevant.
* Non-ASCII characters, and ASCII that may not appear raw in a URI, become
  their UTF-8 octets.
* ``*`` and ``$`` in a URL are compared as octets, so ``%2A`` and ``%24`` in
  a rule match them literally (RFC 9309 §2.2.3).
* Other reserved characters are left as written (``%2F`` is not ``/``).

An escaped octet is held as a single private-use code point, so a pattern
can never match half of an escape. Rule priority is the length of the
pattern in its ``%XX`` spelling.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from indexer.robots_meta import AGENT_TOKENS

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_ROBOTS_BYTES",
    "ROBOTS_AGENT_TOKENS",
    "USER_AGENT_TOKEN",
    "RobotsTxt",
    "robots_policy_for_status",
]

#: Product tokens whose groups our crawler obeys, in priority order. The first one that
#: has a group in the file wins; ``*`` applies only when none has. After our own token
#: come Cloudflare AI Search's crawler names (current, then the pre-2026 one), so a site
#: that moves from Cloudflare AI Search keeps the rules it wrote for that crawler.
#: The same names address us in robots ``<meta>`` tags and ``X-Robots-Tag`` (indexer.robots_meta).
ROBOTS_AGENT_TOKENS: tuple[str, ...] = AGENT_TOKENS
USER_AGENT_TOKEN = ROBOTS_AGENT_TOKENS[0]  # "sitesearch"
MAX_ROBOTS_BYTES = 500 * 1024
# google/robotstxt keeps at most kMaxLineLen - 1 = 2083 * 8 - 1 characters of a line.
MAX_LINE_CHARS = 2083 * 8 - 1

_UTF8_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 reserved characters minus "*" and "$", which RFC 9309 gives a meaning.
_RESERVED_KEPT = frozenset(":/?#[]@!&'()+,;=")
_LITERAL = _UNRESERVED | _RESERVED_KEPT
_PLAIN = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!&'()+,;=]*")
_HEX = frozenset(string.hexdigits)
_ESCAPE_BASE = 0xE000  # escaped octet b is stored as chr(_ESCAPE_BASE + b)
_ESCAPED_DOLLAR = chr(_ESCAPE_BASE + 0x24)
_WILDCARDS = re.compile(r"\*+")
_AGENT_TOKEN = re.compile(r"[\w-]+")
# "name/version" product tokens inside a full User-Agent header.
_UA_PRODUCT = re.compile(r"(?:^|[\s;(])([\w-]+)/")

_USER_AGENT, _ALLOW, _DISALLOW, _SITEMAP = "user-agent", "allow", "disallow", "sitemap"
_CRAWL_DELAY, _REQUEST_RATE, _IGNORED = "crawl-delay", "request-rate", "ignored"
_UNKNOWN = "?"  # prefix of unknown keys returned by _split_record
# Directive spellings (lowercased, internal whitespace collapsed) -> directive.
# The typo list is google/robotstxt's plus Protego's.
_KEYS: dict[str, str] = {
    "user-agent": _USER_AGENT,
    "useragent": _USER_AGENT,
    "user agent": _USER_AGENT,
    "user_agent": _USER_AGENT,
    "allow": _ALLOW,
    "disallow": _DISALLOW,
    "dissallow": _DISALLOW,
    "dissalow": _DISALLOW,
    "disalow": _DISALLOW,
    "diasllow": _DISALLOW,
    "disallaw": _DISALLOW,
    "sitemap": _SITEMAP,
    "sitemaps": _SITEMAP,
    "site-map": _SITEMAP,
    "crawl-delay": _CRAWL_DELAY,
    "crawl delay": _CRAWL_DELAY,
    "crawldelay": _CRAWL_DELAY,
    "request-rate": _REQUEST_RATE,
    "request rate": _REQUEST_RATE,
    "visit-time": _IGNORED,
    "visit time": _IGNORED,
    "host": _IGNORED,
}
_MAX_KEY_WORDS = max(len(key.split()) for key in _KEYS)
_RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"(\d+)\s*/\s*(\d+)\s*([smhd]?)", re.IGNORECASE)


# --------------------------------------------------------------------------- matching


def _canonical(text: str) -> str:
    """Normalise a URL fragment or rule segment for comparison.

    Args:
        text: Raw path/query text, or a pattern segment without ``*`` and
            without the anchoring ``$``.

    Returns:
        The text in canonical form, with escaped octets as private-use code
        points (see module docstring).
    """
    if _PLAIN.fullmatch(text):
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            octet = int(text[i + 1 : i + 3], 16)
            decoded = chr(octet)
            out.append(decoded if decoded in _UNRESERVED else chr(_ESCAPE_BASE + octet))
            i += 3
            continue
        if char in _LITERAL:
            out.append(char)
        else:
            out.extend(chr(_ESCAPE_BASE + b) for b in char.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def _encoded_length(canonical: str) -> int:
    """Return the length of a canonical string written with ``%XX`` escapes."""
    return sum(1 if ch < "\x80" else 3 for ch in canonical)


@dataclass(frozen=True, slots=True)
class _Glob:
    """A canonical pattern split at ``*``; ``anchored`` means it ended in ``$``."""

    parts: tuple[str, ...]
    anchored: bool

    def matches(self, path: str) -> bool:
        """Return whether the canonical ``path`` matches (greedy glob, O(n*m))."""
        parts = self.parts
        first = parts[0]
        if not path.startswith(first):
            return False
        if len(parts) == 1:
            return len(path) == len(first) if self.anchored else True
        pos = len(first)
        for part in parts[1:-1]:
            found = path.find(part, pos)
            if found < 0:
                return False
            pos = found + len(part)
        last = parts[-1]
        if self.anchored:
            return len(path) - len(last) >= pos and path.endswith(last)
        return path.find(last, pos) >= 0


@dataclass(frozen=True, slots=True)
class _Rule:
    """One Allow/Disallow rule; it matches if any of its globs matches."""

    allow: bool
    priority: int
    globs: tuple[_Glob, ...]

    def matches(self, path: str) -> bool:
        """Return whether the rule applies to the canonical ``path``."""
        return any(glob.matches(path) for glob in self.globs)


def _compile_rule(value: str, allow: bool) -> list[_Rule]:
    """Compile an Allow/Disallow value into rules.

    An empty value yields no rule (RFC 9309: empty Disallow allows all).
    A value that starts with neither ``/`` nor ``*`` gets a leading ``/``.
    A trailing ``$`` anchors the pattern and, as in Protego, also matches a
    literal ``$``. ``Allow: /dir/index.htm*`` also allows ``/dir/`` (a Google
    extension that Protego shares).

    Args:
        value: The rule value, comment and surrounding whitespace removed.
        allow: True for Allow, False for Disallow.

    Returns:
        The compiled rules; empty when the value is empty.
    """
    if not value:
        return []
    pattern = value if value[0] in "/*" else "/" + value
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    parts = tuple(_canonical(segment) for segment in _WILDCARDS.split(body))
    priority = sum(map(_encoded_length, parts)) + body.count("*") + anchored
    globs = [_Glob(parts, anchored)]
    if anchored:
        globs.append(_Glob(parts[:-1] + (parts[-1] + _ESCAPED_DOLLAR,), False))
    rules = [_Rule(allow, priority, tuple(globs))]
    slash = pattern.rfind("/")
    if allow and pattern.startswith("/index.htm", slash):
        rules.extend(_compile_rule(pattern[: slash + 1] + "$", allow=True))
    return rules


def _path_and_query(url: str) -> tuple[str, str]:
    """Split a URL (absolute or a path) into raw path and canonical path + query.

    Args:
        url: Absolute URL, or a path with an optional query.

    Returns:
        ``(raw_path, canonical)``; the path is ``/`` when the URL has none, and
        ``?query`` is kept when the URL has a ``?``.
    """
    url = url.partition("#")[0]
    try:
        parts = urlsplit(url)
        path, query = parts.path, parts.query
    except ValueError:  # e.g. an invalid IPv6 authority
        match = re.match(r"(?:[^:/?]+:)?(?://[^/?]*)?([^?]*)\??(.*)", url, re.DOTALL)
        path, query = (match.group(1), match.group(2)) if match else ("", "")
    if not path.startswith("/"):
        path = "/" + path
    full = f"{path}?{query}" if "?" in url else path
    return path, _canonical(full)


# --------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Group:
    """The records of one group; several groups may name the same agent."""

    agents: set[str] = field(default_factory=set)
    is_global: bool = False
    rules: list[_Rule] = field(default_factory=list)
    crawl_delays: list[float] = field(default_factory=list)
    request_rates: list[tuple[int, int]] = field(default_factory=list)


def _decode(body: bytes | str | None, max_bytes: int) -> str:
    """Decode at most ``max_bytes`` of a robots.txt body as UTF-8.

    If the body is longer, the partial last line is dropped so a truncated
    ``Allow`` rule cannot widen access.

    Args:
        body: Raw bytes or already-decoded text; anything else counts as empty.
        max_bytes: Number of UTF-8 bytes to keep.

    Returns:
        The text without a BOM; bad bytes become U+FFFD.
    """
    if isinstance(body, str):
        data = body.encode("utf-8", "surrogatepass")
    elif isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
    else:
        if body is not None:
            logger.warning("robots.txt body of type %s ignored", type(body).__name__)
        return ""
    data = data.removeprefix(_UTF8_BOM)
    if len(data) > max_bytes:
        logger.info("robots.txt is %d bytes; parsing only the first %d", len(data), max_bytes)
        data = data[: max(max_bytes, 0)]
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        data = data[: cut + 1]
    return data.decode("utf-8", errors="replace")


def _normalise_key(key: str) -> str:
    return " ".join(key.split()).lower()


def _split_record(line: str) -> tuple[str, str] | None:
    """Split a comment-free, stripped line into ``(key, value)``.

    Accepts ``key: value`` and, leniently, ``key value`` for known keys
    (including multi-word ones such as ``user agent``).

    Returns:
        ``(directive, value)`` for known keys, ``("?" + raw_key, value)`` for
        unknown ``key: value`` lines, or None when the line is not a record.
    """
    key, colon, rest = line.partition(":")
    if colon:
        name = _normalise_key(key)
        if name in _KEYS:
            return _KEYS[name], rest.strip()
        if not rest or rest[0].isspace():
            return _UNKNOWN + name, rest.strip()
    words = line.split(None, _MAX_KEY_WORDS)
    for count in range(1, min(_MAX_KEY_WORDS, len(words)) + 1):
        name = " ".join(words[:count]).lower()
        if name in _KEYS:
            value = line.split(None, count)[count] if len(words) > count else ""
            return _KEYS[name], value.strip()
    return (_UNKNOWN + _normalise_key(key), rest.strip()) if colon else None


def _agent_token(value: str) -> str | None:
    """Return the product token of a User-agent value, ``"*"`` for the global group.

    Following RFC 9309 / google/robotstxt, the token is the run of identifier
    characters at the start (``"FOO BAR"`` -> ``"foo"``). Unicode letters and
    digits are allowed too, as in Protego.
    """
    if value.startswith("*") and (len(value) == 1 or value[1].isspace()):
        return "*"
    match = _AGENT_TOKEN.match(value.lower())
    return match.group(0) if match else None


def _parse_crawl_delay(value: str) -> float | None:
    try:
        delay = float(value.split()[0].rstrip("sS")) if value else math.nan
    except ValueError:
        return None
    return delay if math.isfinite(delay) and delay >= 0 else None


def _parse_request_rate(value: str) -> tuple[int, int] | None:
    match = _RATE.match(value)
    if not match:
        return None
    requests = int(match.group(1))
    seconds = int(match.group(2)) * _RATE_UNITS[(match.group(3) or "s").lower()]
    return (requests, seconds) if requests > 0 and seconds > 0 else None


def _is_rule_like(key: str, value: str) -> bool:
    """Unknown ``key: /path`` records (likely misspelt rules) end a user-agent list."""
    return key.startswith(_UNKNOWN) and value[:1] in ("/", "*")


def _iter_records(text: str) -> Iterable[tuple[str, str]]:
    for raw in _LINE_BREAK.split(text):
        line = raw[:MAX_LINE_CHARS].partition("#")[0].strip()
        if line:
            record = _split_record(line)
            if record is not None:
                yield record


def _build(text: str) -> tuple[list[_Group], list[str]]:
    """Parse robots.txt text into groups and sitemap URLs.

    Consecutive user-agent lines form one group; the list ends at the first
    rule (or rule-like unknown record). Blank lines, comments, Sitemap,
    Crawl-delay and other records do not end it. Records before any
    user-agent line are ignored, except Sitemap.
    """
    groups: list[_Group] = []
    sitemaps: dict[str, None] = {}
    current: _Group | None = None
    in_agent_list = False
    for key, value in _iter_records(text):
        if key == _USER_AGENT:
            if current is None or not in_agent_list:
                current = _Group()
                groups.append(current)
                in_agent_list = True
            token = _agent_token(value)
            if token == "*":
                current.is_global = True
            elif token:
                current.agents.add(token)
        elif key == _SITEMAP:
            if value:
                sitemaps.setdefault(value)
        elif current is None:
            continue
        elif key in (_ALLOW, _DISALLOW) or _is_rule_like(key, value):
            in_agent_list = False
            if key in (_ALLOW, _DISALLOW):
                current.rules.extend(_compile_rule(value, allow=key == _ALLOW))
        elif key == _CRAWL_DELAY:
            delay = _parse_crawl_delay(value)
            if delay is not None:
                current.crawl_delays.append(delay)
        elif key == _REQUEST_RATE:
            rate = _parse_request_rate(value)
            if rate is not None:
                current.request_rates.append(rate)
    return groups, list(sitemaps)


def _caller_tokens(user_agent: str) -> tuple[str, ...]:
    """Product tokens of the caller: the part before ``/`` or a space, plus any
    other ``name/version`` products in a full User-Agent header."""
    ua = user_agent.strip().lower()
    if not ua:
        return ()
    first = re.split(r"[\s/]", ua, maxsplit=1)[0]
    others = (m.group(1) for m in _UA_PRODUCT.finditer(ua))
    return tuple(dict.fromkeys([first, *others]))


def _agent_tiers(user_agent: str) -> tuple[tuple[str, ...], ...]:
    """The caller's tokens to look up, one tuple per priority tier, highest first.

    Any caller's own product tokens come first. When the caller is our crawler
    (its tokens include :data:`USER_AGENT_TOKEN`), the other
    :data:`ROBOTS_AGENT_TOKENS` follow, one tier each, in their order.
    """
    tokens = _caller_tokens(user_agent)
    if USER_AGENT_TOKEN not in tokens:
        return (tokens,)
    return (tokens, *((alias,) for alias in ROBOTS_AGENT_TOKENS if alias not in tokens))


# --------------------------------------------------------------------------- public API


class RobotsTxt:
    """A parsed robots.txt; immutable apart from a per-instance lookup cache."""

    _MAX_CACHED_AGENTS = 32

    def __init__(
        self,
        groups: Iterable[_Group] = (),
        sitemaps: Iterable[str] = (),
        *,
        label: str = "parsed",
    ) -> None:
        """Use :meth:`parse`, :meth:`allow_all` or :meth:`disallow_all` instead."""
        self._groups: tuple[_Group, ...] = tuple(groups)
        self._sitemaps: tuple[str, ...] = tuple(sitemaps)
        self._label = label
        self._selection: dict[str, tuple[str | None, tuple[_Group, ...], tuple[_Rule, ...]]] = {}

    @classmethod
    def parse(cls, body: bytes | str, *, max_bytes: int = MAX_ROBOTS_BYTES) -> RobotsTxt:
        """Parse a robots.txt body. Never raises on malformed input.

        Args:
            body: Response body (bytes, decoded as UTF-8 with BOM stripping and
                ``errors='replace'``) or text.
            max_bytes: Only this many leading bytes are parsed (RFC 9309 §2.5).

        Returns:
            The parsed rules.
        """
        try:
            groups, sitemaps = _build(_decode(body, max_bytes))
        except Exception:
            logger.exception("robots.txt could not be parsed; treating it as empty")
            groups, sitemaps = [], []
        logger.debug("robots.txt: %d groups, %d sitemaps", len(groups), len(sitemaps))
        return cls(groups, sitemaps)

    @classmethod
    def allow_all(cls) -> RobotsTxt:
        """Rules that allow everything (robots.txt unavailable, 4xx)."""
        return cls(label="allow_all")

    @classmethod
    def disallow_all(cls) -> RobotsTxt:
        """Rules that disallow everything but /robots.txt (5xx, network failure)."""
        group = _Group(is_global=True, rules=_compile_rule("/", allow=False))
        return cls([group], label="disallow_all")

    def __repr__(self) -> str:
        return (
            f"<RobotsTxt {self._label}: {len(self._groups)} groups, "
            f"{len(self._sitemaps)} sitemaps>"
        )

    @property
    def sitemaps(self) -> list[str]:
        """Sitemap URLs as written (possibly relative), in file order, deduplicated."""
        return list(self._sitemaps)

    def allowed(self, url: str, user_agent: str = USER_AGENT_TOKEN) -> bool:
        """Return whether ``user_agent`` may fetch ``url``.

        Our crawler (a ``user_agent`` with the ``sitesearch`` token) also obeys
        groups written for Cloudflare AI Search when the file has none for it
        (see :data:`ROBOTS_AGENT_TOKENS`); Crawl-delay and Request-rate come
        from the same groups.

        Args:
            url: Absolute URL or path (+ query); matched on path + query.
            user_agent: Product token or full User-Agent header (case-insensitive).

        Returns:
            True unless the most specific matching rule is a Disallow.
        """
        raw_path, path = _path_and_query(url)
        if raw_path == "/robots.txt":
            return True
        for rule in self._select(user_agent)[2]:  # longest first, Allow first on ties
            if rule.matches(path):
                return rule.allow
        return True

    def crawl_delay(self, user_agent: str = USER_AGENT_TOKEN) -> float | None:
        """Crawl-delay in seconds for the agent's group; the largest if repeated."""
        delays = [d for group in self._select(user_agent)[1] for d in group.crawl_delays]
        return max(delays) if delays else None

    def request_rate(self, user_agent: str = USER_AGENT_TOKEN) -> tuple[int, int] | None:
        """Request-rate ``(requests, seconds)`` for the agent's group; the slowest if repeated."""
        rates = [r for group in self._select(user_agent)[1] for r in group.request_rates]
        return min(rates, key=lambda rate: rate[0] / rate[1]) if rates else None

    def group_agent(self, user_agent: str = USER_AGENT_TOKEN) -> str | None:
        """Name the groups that apply to ``user_agent`` (for logs and tests).

        Args:
            user_agent: Product token or full User-Agent header (case-insensitive).

        Returns:
            The matched group token (lowercase, e.g. ``"cloudflare-ai-search"``),
            ``"*"`` for the global groups, or None when no group applies.
        """
        return self._select(user_agent)[0]

    def _select(self, user_agent: str) -> tuple[str | None, tuple[_Group, ...], tuple[_Rule, ...]]:
        """Return the matched token, the groups that apply to ``user_agent`` and their merged, sorted rules.

        Tiers are tried in order (see :func:`_agent_tiers`). Within a tier the
        most specific group wins: the longest group token that is a prefix of
        one of the tier's tokens (all groups with that token are merged). The
        first tier with a match decides; if none matches, the ``*`` groups apply.
        """
        cached = self._selection.get(user_agent)
        if cached is not None:
            return cached
        tiers = _agent_tiers(user_agent)
        best = ""
        for rank, tokens in enumerate(tiers):
            for group in self._groups:
                for agent in group.agents:
                    if len(agent) > len(best) and any(t.startswith(agent) for t in tokens):
                        best = agent
            if best:
                if rank:
                    logger.info(
                        "robots.txt has no group for %s; obeying the %s groups (Cloudflare AI Search compatibility)",
                        "/".join(tiers[0]) or "the caller",
                        best,
                    )
                break
        if best:
            matched: str | None = best
            groups = tuple(g for g in self._groups if best in g.agents)
        else:
            groups = tuple(g for g in self._groups if g.is_global)
            matched = "*" if groups else None
        rules = sorted(
            (rule for g in groups for rule in g.rules),
            key=lambda rule: (-rule.priority, not rule.allow),
        )
        selected = (matched, groups, tuple(rules))
        if len(self._selection) >= self._MAX_CACHED_AGENTS:
            self._selection.clear()
        self._selection[user_agent] = selected
        return selected


def robots_policy_for_status(status: int | None) -> str:
    """Map the robots.txt fetch result to a policy (RFC 9309 §2.3.1).

    Args:
        status: Final HTTP status after the fetcher followed up to 5 redirects,
            or None for a network failure / timeout.

    Returns:
        ``"parse"`` for 2xx. ``"allow_all"`` for 4xx (the file is
        "unavailable") and for a 3xx that reaches us, which means more than
        5 redirects: §2.3.1.2 lets crawlers treat that as unavailable.
        ``"disallow_all"`` for 5xx, None, and any other status
        ("unreachable", §2.3.1.4).
    """
    if status is None:
        return "disallow_all"
    if 200 <= status < 300:
        return "parse"
    if 300 <= status < 500:
        return "allow_all"
    return "disallow_all"
