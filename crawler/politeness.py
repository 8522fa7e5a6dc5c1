"""Per-host politeness shared by every crawler process: a lease + next-allowed-time in Redis.

With ``SITESEARCH_REDIS_URL`` several workers crawl one site at once, so the
per-host concurrency limit and the robots.txt ``Crawl-delay`` must hold for all
of them together, not per process.  Before each download :class:`HostBudget`
runs one Lua script that, atomically:

* drops expired leases (a worker that died mid-download gives its lease back
  after ``lease_ttl`` seconds),
* refuses while ``now`` is before the host's next allowed start time
  (returns the seconds to wait),
* refuses while ``max_concurrency`` leases are out (returns a short poll interval),
* otherwise adds a lease for ``token`` and sets the next allowed start time to
  ``now + delay``.

The download gives its lease back with :meth:`HostBudget.release`.  Keys are per
host (``sitesearch:host:{host}:leases`` / ``:next``), not per job, so two jobs
on the same host share one budget.  Times come from the Redis server's clock
(``TIME``), so workers on machines with skewed clocks still agree.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a worker waits before asking again when the host's concurrency cap is reached.
CAP_POLL = 0.05

ACQUIRE = """
local leases, nextk = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local cap, delay, ttl, token = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local nxt = tonumber(redis.call('GET', nextk) or '0')
if nxt > now then
  return string.format('%.6f', nxt - now)
end
if redis.call('ZCARD', leases) >= cap then
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  return string.format('%.6f', math.max(0.001, math.min(tonumber(ARGV[6]), tonumber(first[2]) - now)))
end
redis.call('ZADD', leases, string.format('%.6f', now + ttl), token)
redis.call('EXPIRE', leases, math.ceil(ttl) + 60)
if delay > 0 then
  redis.call('SET', nextk, string.format('%.6f', now + delay), 'EX', math.ceil(delay) + 60)
end
return '0'
"""

RELEASE = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


def host_keys(host: str) -> list[str]:
    """The Redis keys of one host's budget: the lease set and the next-allowed time."""
    return [f"sitesearch:host:{host}:leases", f"sitesearch:host:{host}:next"]


class HostBudget:
    """Cluster-wide per-host concurrency cap and delay between request starts.

    Args:
        redis: a ``redis.Redis`` client (``decode_responses`` either way).
        lease_ttl: seconds after which a lease that was never released expires
            (longer than the download timeout).
    """

    def __init__(self, redis: Any, *, lease_ttl: float = 120.0) -> None:
        self.redis = redis
        self.lease_ttl = lease_ttl
        self._acquire = redis.register_script(ACQUIRE)
        self._release = redis.register_script(RELEASE)

    @staticmethod
    def new_token() -> str:
        """A unique lease token for one download."""
        return uuid.uuid4().hex

    def acquire(
        self,
        host: str,
        token: str,
        *,
        max_concurrency: int,
        delay: float,
        now: float | None = None,
        lease_ttl: float | None = None,
    ) -> float:
        """Try to start a download to ``host``.

        Args:
            host: the host (``name[:port]``) the budget is kept for.
            token: this download's lease token (see :meth:`new_token`).
            max_concurrency: downloads allowed in flight to the host, cluster-wide.
            delay: minimum seconds between two request starts to the host, cluster-wide.
            now: the time to use (seconds); default the Redis server's clock.
            lease_ttl: override of the lease lifetime (seconds).

        Returns:
            0.0 when granted (the lease is held until :meth:`release`), else the seconds to wait.
        """
        ttl = self.lease_ttl if lease_ttl is None else lease_ttl
        args = ["" if now is None else repr(float(now)), max(1, int(max_concurrency)), float(delay), float(ttl), token, CAP_POLL]
        result = self._acquire(keys=host_keys(host), args=args)
        return float(result.decode() if isinstance(result, bytes) else result)

    def release(self, host: str, token: str) -> bool:
        """Give a lease back; True if it was still held."""
        return bool(self._release(keys=host_keys(host)[:1], args=[token]))
