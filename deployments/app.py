"""The typed app builder: `import_path: deployments.app:build` in serve_config.yaml.

    Ingress ──► Matting (CPU) ──► Reconstruct (fractional GPU, batched, backlog-autoscaled) ──► Publish (CPU)
Resource options live in serve_config.yaml (production) or in `deployment_options` (tests, `shop3d serve`).
"""

# No `from __future__ import annotations`: Serve reads `build`'s annotation to validate `args` as AppArgs.
from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from deployments.ingress import Ingress
from deployments.matting import Matting
from deployments.publish import Publish
from deployments.reconstruct import LiveKnobs, Reconstruct
from deployments.settings import AppArgs, AppArgsBase, replica_settings

DEPLOYMENTS = {"Ingress": Ingress, "Matting": Matting, "Reconstruct": Reconstruct, "Publish": Publish}


def build_app(args: AppArgs | Mapping[str, Any],
              deployment_options: Mapping[str, Mapping[str, Any]] | None = None) -> Application:
    """The graph with `args` (AppArgs, or a mapping validated as one: `shop3d serve` passes
    Settings.replica_overrides()) as every replica's setting overrides; options override decorator defaults."""
    overrides = (args if isinstance(args, AppArgsBase) else AppArgs(**args)).overrides()
    replica_settings(overrides)  # fail the deploy now, not in four replicas, when the settings are invalid
    options = deployment_options or {}
    unknown = set(options) - set(DEPLOYMENTS)
    if unknown:
        raise ValueError(f"unknown deployments {sorted(unknown)}; expected {sorted(DEPLOYMENTS)}")
    if "user_config" in options.get("Reconstruct", {}):
        LiveKnobs(**options["Reconstruct"]["user_config"])   # refuse bad knobs before anything is deployed

    def bound(name: str, *init_args: Any) -> Application:
        deployment: Any = DEPLOYMENTS[name]   # a serve.Deployment; Serve's decorator is untyped, mypy sees the class
        if name in options:
            deployment = deployment.options(**options[name])
        application: Application = deployment.bind(*init_args)
        return application

    return bound("Ingress", bound("Matting", overrides), bound("Reconstruct", overrides),
                 bound("Publish", overrides), overrides)


def build(args: AppArgs) -> Application:
    """Serve's entry point; `args` is validated by Serve against AppArgs (unknown keys are an error)."""
    return build_app(args)
