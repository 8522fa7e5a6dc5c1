"""One job's crawl coordinated through Redis, so any number of workers can share it.

With ``SITESEARCH_REDIS_URL`` every ``scrapy crawl site -a instance=ID`` process
that joins a job holds a :class:`SharedFrontier` for it.  Keys (all under
``sitesearch:job:{job}:``, see docs/scale-out.md):

* ``requests`` (zset): page requests (scrapy-redis serialisation), score
  ``-priority * 1e9 + push number``: priority order, FIFO within a priority;
* ``dupefilter`` (set): request fingerprints (scrapy-redis ``RFPDupeFilter``);
* ``pushes`` / ``tokens`` / ``seq`` (counters): push order, hold tokens, frontier
  sequence numbers (handed out in blocks);
* ``leader`` (string): the leader's worker id (``SET NX`` with a TTL, refreshed);
* ``workers`` (set), ``worker:{id}`` (heartbeat with a TTL), ``held:{id}`` (hash
  token → "score data": the worker's popped, unanswered requests; when its heartbeat
  expires they go back to ``requests`` at the next drain check);
* ``robots`` (hash ``policy``/``body``), ``follow_links``: what followers need from the leader;
* ``fed``: set by the leader once discovery is over and the whole frontier is in
  ``requests`` ("1", or "aborted" when robots.txt stopped the sync);
  ``sitemap_failures``: for the deletion guard;
* ``gone`` (list ``item_id status``): pages that answered 404/410;
* ``links`` (set) / ``links_recorded``: link discovery claims and the job-wide limit;
* ``finalizer`` / ``closed``: who applies deletions; set when that is done.

The job is drained when ``fed`` is set, ``requests`` is empty and no live worker has
anything in flight.  A request counts as in flight (is *held*) from the moment it
is popped (the pop and the hold are one Lua script) until its callback or errback
has finished, after any links it found were pushed.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from scrapy.http import Request
from scrapy_redis.dupefilter import RFPDupeFilter
from scrapy_redis.queue import PriorityQueue

logger = logging.getLogger(__name__)

HEARTBEAT_TTL = 30  # seconds without a heartbeat before a worker counts as dead (its requests re-queued)
LEADER_TTL = 60  # seconds without a refresh before another worker may take the lead
SEQ_BLOCK = 1000  # frontier sequence numbers reserved per round trip
KEEP_AFTER_CLOSE = 3600  # seconds the job's keys are kept once it is over
SHARED_META = "shared_frontier"  # request.meta: the hold token of a request popped from the shared queue
DONE_META = "shared_frontier_done"  # request.meta flag: its in-flight count was given back

PUSH = """
if ARGV[1] ~= '' and redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], string.format('%.0f', -tonumber(ARGV[2]) * 1e9 + n), ARGV[3])
return 1
"""

POP = """
local r = redis.call('ZPOPMIN', KEYS[1])
if #r == 0 then return false end
local token = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], token, r[2] .. ' ' .. r[1])
return {tostring(token), r[1]}
"""

# KEYS: fed, requests, workers; ARGV[1]: the job's key prefix.
# First the requests held by dead workers (no heartbeat) go back to the queue.
DRAIN_STATE = """
local prefix, requeued = ARGV[1], 0
local workers = redis.call('SMEMBERS', KEYS[3])
for _, w in ipairs(workers) do
  if redis.call('EXISTS', prefix .. 'worker:' .. w) == 0 then
    local held = redis.call('HGETALL', prefix .. 'held:' .. w)
    for i = 2, #held, 2 do
      local sp = string.find(held[i], ' ', 1, true)
      redis.call('ZADD', KEYS[2], string.sub(held[i], 1, sp - 1), string.sub(held[i], sp + 1))
      requeued = requeued + 1
    end
    redis.call('DEL', prefix .. 'held:' .. w)
    redis.call('SREM', KEYS[3], w)
  end
end
local state = 'drained'
if redis.call('EXISTS', KEYS[1]) == 0 then
  state = 'discovering'
elseif redis.call('ZCARD', KEYS[2]) > 0 then
  state = 'queued'
else
  for _, w in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if redis.call('HLEN', prefix .. 'held:' .. w) > 0 then state = 'in_flight' break end
  end
end
return {state, requeued}
"""

REFRESH_LEADER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE_LEADER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

CLAIM_LINK = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 'seen' end
if redis.call('INCR', KEYS[2]) > tonumber(ARGV[2]) then return 'over' end
return 'new'
"""


class JobQueue(PriorityQueue):
    """scrapy-redis's priority queue, FIFO within a priority, with the dupefilter check in the push.

    scrapy-redis orders equal scores by the pickled request bytes and pops with
    ``MULTI`` + ``ZRANGE``/``ZREMRANGEBYRANK``; here a push counter breaks ties (sitemap
    order), the push skips already-seen fingerprints atomically, and the pop counts
    the request in flight for this worker in the same script.
    """

    def __init__(self, server: Any, spider: Any, key: str, *, frontier: SharedFrontier) -> None:
        super().__init__(server, spider, key)
        self.frontier = frontier
        self._push = server.register_script(PUSH)
        self._pop = server.register_script(POP)

    def push_if_new(self, request: Request, fingerprint: str | None) -> bool:
        """Queue a request unless its fingerprint was seen (``None``: no check). True if queued."""
        k = self.frontier.keys
        args = [fingerprint or "", request.priority, self._encode_request(request)]
        return bool(self._push(keys=[self.key, k["dupefilter"], k["pushes"]], args=args))

    def push(self, request: Request) -> None:
        self.push_if_new(request, None)

    def pop(self, timeout: int = 0) -> Request | None:
        f = self.frontier
        popped = self._pop(keys=[self.key, f.held_key, f.keys["tokens"]])
        if not popped:
            return None
        token, data = popped
        request = self._decode_request(data)
        request.meta[SHARED_META] = token.decode() if isinstance(token, bytes) else str(token)
        return request


class SharedFrontier:
    """A worker's handle on one job's shared state in Redis.

    Args:
        redis: a ``redis.Redis`` client (bytes responses).
        job_id: the sync job all workers share.
        worker_id: this worker's id (default ``host:pid:random``).
        heartbeat_ttl: seconds without a heartbeat before this worker counts as dead.
        leader_ttl: seconds without a refresh before another worker may take the lead.
    """

    def __init__(
        self,
        redis: Any,
        job_id: str,
        *,
        worker_id: str | None = None,
        heartbeat_ttl: int = HEARTBEAT_TTL,
        leader_ttl: int = LEADER_TTL,
    ) -> None:
        self.redis = redis
        self.heartbeat_ttl = heartbeat_ttl
        self.leader_ttl = leader_ttl
        self.job_id = job_id
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        prefix = f"sitesearch:job:{job_id}:"
        self.prefix = prefix
        names = (
            "requests dupefilter pushes tokens seq leader workers robots follow_links fed sitemap_failures gone "
            "links links_recorded finalizer closed"
        )
        self.keys = {name: prefix + name for name in names.split()}
        self.heartbeat_key = f"{prefix}worker:{self.worker_id}"
        self.held_key = f"{prefix}held:{self.worker_id}"
        self.is_leader = False
        self.held = 0  # requests this worker popped and has not answered yet
        self.dupefilter = RFPDupeFilter(redis, self.keys["dupefilter"])
        self.queue: JobQueue | None = None
        self._seq_next = 0
        self._seq_end = 0
        self._drain_state = redis.register_script(DRAIN_STATE)
        self._refresh_leader = redis.register_script(REFRESH_LEADER)
        self._release_leader = redis.register_script(RELEASE_LEADER)
        self._claim_link = redis.register_script(CLAIM_LINK)

    @classmethod
    def from_url(cls, url: str, job_id: str, **kwargs: Any) -> SharedFrontier:
        """Connect to ``url`` (``redis://host:port/db``); ``kwargs`` as for the constructor."""
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=30, retry_on_timeout=True), job_id, **kwargs)

    def open_queue(self, spider: Any) -> JobQueue:
        """The job's request queue (needs the spider to (de)serialise callbacks)."""
        if self.queue is None:
            self.queue = JobQueue(self.redis, spider, self.keys["requests"], frontier=self)
        return self.queue

    # --- membership and leadership ----------------------------------------------------------
    def join(self) -> bool:
        """Register this worker and try to become the leader; returns True if we lead."""
        self.heartbeat()
        return self.try_lead()

    def heartbeat(self) -> None:
        """Refresh this worker's liveness key (and the leadership, when we hold it)."""
        self.redis.set(self.heartbeat_key, 1, ex=self.heartbeat_ttl)
        self.redis.sadd(self.keys["workers"], self.worker_id)
        if self.is_leader and not self._refresh_leader(keys=[self.keys["leader"]], args=[self.worker_id, self.leader_ttl]):
            self.is_leader = False
            logger.warning("lost the leadership of job %s (refresh came too late)", self.job_id)

    def try_lead(self) -> bool:
        """Become the leader if nobody is (``SET NX``); True if we are the leader now."""
        if not self.is_leader:
            self.is_leader = bool(self.redis.set(self.keys["leader"], self.worker_id, nx=True, ex=self.leader_ttl))
        return self.is_leader

    def leader_alive(self) -> bool:
        return bool(self.redis.exists(self.keys["leader"]))

    def leave(self) -> None:
        """Unregister: requests we still hold go back to the queue, and the lead is free for others."""
        self.redis.delete(self.heartbeat_key)
        self.drain_state()  # reaps us like a dead worker
        if self.is_leader:
            self._release_leader(keys=[self.keys["leader"]], args=[self.worker_id])
            self.is_leader = False

    def live_workers(self) -> int:
        """Workers of this job whose heartbeat is current."""
        workers = [w.decode() if isinstance(w, bytes) else w for w in self.redis.smembers(self.keys["workers"])]
        return sum(bool(self.redis.exists(f"{self.prefix}worker:{w}")) for w in workers)

    # --- requests -------------------------------------------------------------------------------
    def push(self, request: Request) -> bool:
        """Queue a page request for any worker, unless the dupefilter has seen it; True if queued."""
        assert self.queue is not None, "open_queue() first"
        fp = None if request.dont_filter else self.dupefilter.request_fingerprint(request)
        return self.queue.push_if_new(request, fp)

    def seen(self, request: Request) -> bool:
        """Record a request in the job's dupefilter; True if it had been seen before."""
        return bool(self.dupefilter.request_seen(request))

    def pop(self) -> Request | None:
        """The highest-priority queued request, counted in flight for this worker; None if empty."""
        assert self.queue is not None, "open_queue() first"
        request = self.queue.pop()
        self.held += request is not None
        return request

    def queue_len(self) -> int:
        return int(self.redis.zcard(self.keys["requests"]))

    def done(self, request: Request | None) -> None:
        """A request popped from the shared queue has been answered (idempotent per request)."""
        if request is None or not request.meta.get(SHARED_META) or request.meta.get(DONE_META):
            return
        request.meta[DONE_META] = True
        self.held -= 1
        self.redis.hdel(self.held_key, request.meta[SHARED_META])

    def next_seq(self) -> int:
        """A frontier sequence number unique across the job's workers (blocks of ``SEQ_BLOCK``)."""
        if self._seq_next >= self._seq_end:
            self._seq_end = int(self.redis.incrby(self.keys["seq"], SEQ_BLOCK)) + 1
            self._seq_next = self._seq_end - SEQ_BLOCK
        self._seq_next += 1
        return self._seq_next - 1

    def claim_link(self, url: str, limit: int) -> str:
        """Link discovery across workers: ``"new"``, ``"seen"`` (claimed before) or ``"over"`` the limit."""
        result = self._claim_link(keys=[self.keys["links"], self.keys["links_recorded"]], args=[url, limit])
        return result.decode() if isinstance(result, bytes) else str(result)

    # --- robots.txt, discovery, drain -------------------------------------------------------------
    def publish_robots(self, policy: str, body: bytes = b"") -> None:
        """The leader's robots.txt outcome (``parse`` + body, ``allow_all`` or ``disallow_all``)."""
        self.redis.hset(self.keys["robots"], mapping={"policy": policy, "body": body})

    def robots(self) -> tuple[str, bytes] | None:
        """The published robots.txt ``(policy, body)``, or None before the leader has it."""
        data = self.redis.hgetall(self.keys["robots"])
        if not data:
            return None
        policy = data.get(b"policy", b"allow_all").decode()
        return policy, data.get(b"body", b"")

    def publish_follow_links(self) -> None:
        """The leader follows links this sync (link discovery, or the no-sitemap fallback)."""
        self.redis.set(self.keys["follow_links"], 1)

    def follow_links(self) -> bool:
        return bool(self.redis.exists(self.keys["follow_links"]))

    def set_fed(self, *, sitemap_failures: int = 0, aborted: bool = False) -> None:
        """The leader has queued the whole frontier (or discovery stopped: ``aborted``)."""
        self.redis.set(self.keys["sitemap_failures"], sitemap_failures)
        self.redis.set(self.keys["fed"], "aborted" if aborted else "1")

    def fed(self) -> str | None:
        value = self.redis.get(self.keys["fed"])
        return value.decode() if value else None

    def sitemap_failures(self) -> int:
        return int(self.redis.get(self.keys["sitemap_failures"]) or 0)

    def drain_state(self) -> str:
        """``discovering``, ``queued``, ``in_flight`` or ``drained`` (one atomic look).

        Requests held by workers whose heartbeat has expired are first put back in the queue.
        """
        k = self.keys
        state, requeued = self._drain_state(keys=[k["fed"], k["requests"], k["workers"]], args=[self.prefix])
        if requeued:
            logger.warning("job %s: %d requests of stopped workers put back in the queue", self.job_id, requeued)
        return state.decode() if isinstance(state, bytes) else str(state)

    # --- the end of the job --------------------------------------------------------------------
    def add_gone(self, item_id: str, status: int) -> None:
        """Remember a page that answered 404/410 (removed at the end, subject to the safety guard)."""
        self.redis.rpush(self.keys["gone"], f"{item_id} {status}")

    def gone(self) -> list[tuple[str, int]]:
        out = []
        for raw in self.redis.lrange(self.keys["gone"], 0, -1):
            item_id, status = raw.decode().rsplit(" ", 1)
            out.append((item_id, int(status)))
        return out

    def claim_finalizer(self) -> bool:
        """True for the one worker that applies deletions and ends the crawl."""
        return bool(self.redis.set(self.keys["finalizer"], self.worker_id, nx=True))

    def mark_closed(self) -> None:
        """The finalizer is done: every worker may close; the job's keys expire after a while."""
        self.redis.set(self.keys["closed"], 1)
        self.expire_all()

    def expire_all(self) -> None:
        """Let every key of the job expire after ``KEEP_AFTER_CLOSE`` seconds."""
        for key in self.redis.scan_iter(match=f"{self.prefix}*", count=1000):
            self.redis.expire(key, KEEP_AFTER_CLOSE)

    def closed(self) -> bool:
        return bool(self.redis.exists(self.keys["closed"]))
