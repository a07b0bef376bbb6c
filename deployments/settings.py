"""What the app builder passes to every deployment: non-secret setting overrides, never the secrets.

`AppArgs` is derived from `pipeline.settings.Settings` (every field but the SecretStr ones, each optional),
so a new setting reaches the replicas without a second list to keep in step. Each replica builds its
`Settings` from its own environment (where the cluster image or node puts SUPABASE_SERVICE_ROLE_KEY and
WEBHOOK_SECRET) plus these overrides, so no secret travels through serve_config.yaml, Ray's GCS or the
dashboard.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, create_model
from pydantic.fields import FieldInfo

from pipeline.settings import Settings


class AppArgsBase(BaseModel):
    """The `args:` of serve_config.yaml (typed app builder); every field overrides one env setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def overrides(self) -> dict[str, Any]:
        """The settings named in `args:`, JSON-ready (replica constructors receive plain values)."""
        return self.model_dump(mode="json", exclude_none=True)


def _optional(field: FieldInfo) -> tuple[Any, FieldInfo]:
    """The same field (type, constraints, description) but optional with no default of its own."""
    optional = copy.copy(field)
    optional.default = None
    optional.default_factory = None
    annotation: Any = field.annotation
    return annotation | None, optional


def _derive_app_args() -> type[AppArgsBase]:
    fields: dict[str, Any] = {name: _optional(field) for name, field in Settings.model_fields.items()
                              if name not in Settings.secret_fields()}
    model: type[AppArgsBase] = create_model("AppArgs", __base__=AppArgsBase, __module__=__name__, **fields)
    return model


if TYPE_CHECKING:
    AppArgs = AppArgsBase
else:
    AppArgs = _derive_app_args()


def replica_settings(overrides: dict[str, Any]) -> Settings:
    """This replica's Settings: its environment / .env, then the app's non-secret overrides."""
    return Settings(**overrides)
