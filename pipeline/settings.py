"""Service settings from the environment or a `.env` file, read once by the CLI or the app builder.

Names follow the earlier worker's README (ARCHITECTURE.md "Settings"). Secrets are `SecretStr`, so
they print as '**********' in logs, reprs and errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.assets.formats import DEFAULT_FORMATS, OutputFormat
from pipeline.presets import DEFAULT_CHUNK_SIZE, PRESETS

Quality = Literal["fast", "balanced", "quality"]

MIB = 1024 * 1024
# The largest file a job can store: the biggest GLB or USDZ byte budget of any preset (posters and
# reports are far smaller). A storage bucket must accept at least this.
LARGEST_ASSET_BYTES = max(max(preset.max_glb_bytes, preset.max_usdz_bytes) for preset in PRESETS.values())
# The bucket limit asked for at creation: that plus 1 MiB of margin, rounded up to whole MiB (the
# dashboard shows MB), so it stays under a small project's global upload limit (50 MiB on the Free plan).
DEFAULT_FILE_SIZE_LIMIT = -(-(LARGEST_ASSET_BYTES + MIB) // MIB) * MIB


class Settings(BaseSettings):
    """Every knob of a running shop3d; unknown env vars are ignored, bad values fail at start-up."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      case_sensitive=False)

    # queue
    redis_url: str = "redis://localhost:6379/0"
    queue_name: str = "celery"
    max_attempts: int = Field(3, ge=1, description="claims of one job before it is dead-lettered")
    max_inflight: int = Field(8, ge=1, description="jobs one ingress replica works on at once")
    job_timeout_s: float = Field(1800.0, gt=0, description="one attempt's deadline in the graph")
    heartbeat_ttl_s: float = Field(30.0, gt=0, description="a consumer silent this long is presumed dead")
    retry_base_s: float = Field(10.0, gt=0, description="first retry delay of a transient failure")

    # storage
    storage_backend: Literal["local", "supabase"] | None = None  # None: supabase iff SUPABASE_URL
    local_storage_dir: Path = Path("storage")
    local_storage_base_url: str | None = None  # URL prefix that serves local_storage_dir, if any
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    supabase_bucket_name: str = "3d-models"
    supabase_signed_urls: bool = False
    supabase_signed_url_ttl_s: int = 7 * 24 * 3600
    supabase_file_size_limit: int = Field(
        DEFAULT_FILE_SIZE_LIMIT, ge=LARGEST_ASSET_BYTES,
        description="bytes: the file size limit of a bucket shop3d creates; at most the project's global upload "
                    "limit, at least the largest preset budget")

    # backend webhook
    backend_url: str | None = None
    webhook_path: str = "/api/webhooks/3d-model"
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: int = Field(6, ge=1)

    # operators: POST /jobs, the admin API and the console at /ui need `Authorization: Bearer <token>`
    # (or the console's session cookie); unset, those routes are disabled, not open.
    operator_token: SecretStr | None = None

    # models and compute
    tsr_model: str = "stabilityai/TripoSR"
    rembg_model: str = "u2net"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = None
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=0, description="points per decoder call; 0 = unchunked")
    default_quality: Quality = "balanced"
    # Files made when a job names no `formats`: any of glb, usdz, poster, report (JSON list in the env).
    default_formats: tuple[OutputFormat, ...] = DEFAULT_FORMATS

    # input safety
    allow_private_urls: bool = False
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    download_timeout_s: float = 20.0

    @model_validator(mode="after")
    def _resolve_storage_backend(self) -> Settings:
        if self.storage_backend is None:
            self.storage_backend = "supabase" if self.supabase_url else "local"
        if self.storage_backend == "supabase" and not (self.supabase_url and self.supabase_service_role_key):
            raise ValueError("STORAGE_BACKEND=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        return self

    @classmethod
    def secret_fields(cls) -> frozenset[str]:
        """Fields typed SecretStr: they reach replicas only through each node's environment."""
        return frozenset(name for name, field in cls.model_fields.items() if SecretStr in get_args(field.annotation))

    def replica_overrides(self) -> dict[str, Any]:
        """Every non-secret setting (JSON-ready), for the app builder to hand to every replica, so a replica
        runs with what this process read from its environment and `.env`, not with its own defaults."""
        return self.model_dump(mode="json", exclude=set(self.secret_fields()), exclude_none=True)

    def secret_environment(self) -> dict[str, str]:
        """ENV_NAME -> value of each secret that is set (for a local replica's inherited environment only)."""
        secrets = {name.upper(): getattr(self, name) for name in self.secret_fields()}
        return {env: secret.get_secret_value() for env, secret in secrets.items() if secret is not None}

    @property
    def webhook_url(self) -> str | None:
        """BACKEND_URL joined with WEBHOOK_PATH, or None when no backend is configured."""
        if not self.backend_url:
            return None
        return self.backend_url.rstrip("/") + "/" + self.webhook_path.lstrip("/")
