"""FastAPI dependencies: settings, stores, the account check and instance lookup."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request

from indexer.config import Settings
from indexer.instance import InstanceConfig
from indexer.service import IndexService
from indexer.state import StateStore
from server.errors import APIError
from server.jobs import JobRunner


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_state(request: Request) -> StateStore:
    return request.app.state.state


def get_service(request: Request) -> IndexService:
    return request.app.state.service


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[StateStore, Depends(get_state)]
ServiceDep = Annotated[IndexService, Depends(get_service)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]


def check_account(settings: SettingsDep, account_id: Annotated[str, Path()]) -> str:
    """Only the configured account id exists (404 otherwise)."""
    if account_id != settings.account_id:
        raise APIError(404, f"account {account_id!r} not found")
    return account_id


AccountDep = Annotated[str, Depends(check_account)]


def load_instance(state: StateStore, instance_id: str) -> tuple[dict[str, Any], InstanceConfig]:
    """The instance row and its typed config, or a 404."""
    row = state.get_instance(instance_id)
    if row is None:
        raise APIError(404, f"instance {instance_id!r} not found")
    return row, InstanceConfig.model_validate({**row["config"], "id": row["id"]})
