"""What the app builder passes to every deployment: non-secret setting overrides, never the secrets.

Each replica builds its `Settings` from its own environment (where the cluster image or node puts
SUPABASE_SERVICE_ROLE_KEY and WEBHOOK_SECRET) plus these overrides, so no secret travels through
serve_config.yaml, Ray's GCS or the dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.settings import Settings


class AppArgs(BaseModel):
    """The `args:` of serve_config.yaml (typed app builder); every field overrides one env setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str | None = None
    queue_name: str | None = None
    max_inflight: int | None = Field(None, ge=1)
    max_attempts: int | None = Field(None, ge=1)
    job_timeout_s: float | None = Field(None, gt=0)
    heartbeat_ttl_s: float | None = Field(None, gt=0)
    retry_base_s: float | None = Field(None, gt=0)
    storage_backend: Literal["local", "supabase"] | None = None
    local_storage_dir: Path | None = None
    local_storage_base_url: str | None = None
    supabase_url: str | None = None
    supabase_bucket_name: str | None = None
    backend_url: str | None = None
    webhook_path: str | None = None
    tsr_model: str | None = None
    rembg_model: str | None = None
    device: Literal["auto", "cpu", "cuda"] | None = None
    chunk_size: int | None = Field(None, ge=0)
    allow_private_urls: bool | None = None
    default_formats: tuple[Literal["glb", "usdz", "poster", "report"], ...] | None = None

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def replica_settings(overrides: dict[str, Any]) -> Settings:
    """This replica's Settings: its environment / .env, then the app's non-secret overrides."""
    return Settings(**overrides)
