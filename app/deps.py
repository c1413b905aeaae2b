"""Request-scoped dependencies, read from app.state (no module globals)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.settings import Settings
from app.storage.paths import PathPolicy


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_policy(request: Request) -> PathPolicy:
    policy: PathPolicy = request.app.state.policy
    return policy


SettingsDep = Annotated[Settings, Depends(get_settings)]
PolicyDep = Annotated[PathPolicy, Depends(get_policy)]
