"""FastAPI dependencies: settings, stores, the account check and instance lookup.

The dependencies here do no I/O and are ``async def``: FastAPI runs a plain ``def``
dependency in its thread pool, one thread hop per dependency per request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request

from indexer.config import Settings
from indexer.instance import InstanceConfig
from indexer.service import IndexService
from indexer.state import StateStore
from server.errors import APIError
from server.jobs import JobRunner

T = TypeVar("T")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_state(request: Request) -> StateStore:
    return request.app.state.state


async def get_service(request: Request) -> IndexService:
    return request.app.state.service


async def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[StateStore, Depends(get_state)]
ServiceDep = Annotated[IndexService, Depends(get_service)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]


async def check_account(settings: SettingsDep, account_id: Annotated[str, Path()]) -> str:
    """Only the configured account id exists (404 otherwise)."""
    if account_id != settings.account_id:
        raise APIError(404, f"account {account_id!r} not found")
    return account_id


AccountDep = Annotated[str, Depends(check_account)]


async def run_search_pool(pool: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn(*args)`` (embed + index queries) on the app's search pool (``app.state.search_pool``).

    A small pool sized to the cores (``Settings.search_threads``) rather than the
    40-thread default pool: concurrent searches then queue instead of oversubscribing
    the CPU, and one thread hop serves the whole request.
    """
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def load_instance(state: StateStore, instance_id: str) -> tuple[dict[str, Any], InstanceConfig]:
    """The instance row and its typed config, or a 404."""
    row = state.get_instance(instance_id)
    if row is None:
        raise APIError(404, f"instance {instance_id!r} not found")
    return row, InstanceConfig.model_validate({**row["config"], "id": row["id"]})


class InstanceCache:
    """Validated instance configs for ``/search``, each reused for ``ttl`` seconds.

    Saves the instance-row query and validation on the hot path.  :meth:`forget` (PATCH,
    DELETE) makes a change visible at once in this process; other API processes sharing the
    database see it when their entry expires, within ``ttl`` seconds.  Missing instances are
    not cached, so a new instance is searchable at once.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, InstanceConfig]] = {}
        self._generation = 0  # bumped by forget(): a load that raced with it is not stored
        self._lock = threading.Lock()

    def peek(self, instance_id: str) -> InstanceConfig | None:
        """The cached config if still fresh (no I/O: safe on the event loop)."""
        entry = self._entries.get(instance_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def get(self, state: StateStore, instance_id: str) -> InstanceConfig:
        """The fresh cached config, else load it (404 if missing) and cache it."""
        config = self.peek(instance_id)
        if config is not None:
            return config
        generation = self._generation
        _row, config = load_instance(state, instance_id)
        if self.ttl > 0:
            with self._lock:
                if generation == self._generation:
                    self._entries[instance_id] = (time.monotonic() + self.ttl, config)
        return config

    def forget(self, instance_id: str) -> None:
        """Drop an instance's entry (after it changed or was deleted in this process)."""
        with self._lock:
            self._generation += 1
            self._entries.pop(instance_id, None)


def forget_instance(request: Request, instance_id: str) -> None:
    """Invalidate this process's cached config of ``instance_id`` (see :class:`InstanceCache`)."""
    cache = getattr(request.app.state, "instance_cache", None)
    if cache is not None:
        cache.forget(instance_id)
