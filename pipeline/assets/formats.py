"""The files a job can ask for, stated once: names, defaults, file names and content types.

A leaf (it imports nothing from `pipeline`), so the job contract, settings, storage and webhooks
share this table with the exporter instead of restating it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast, get_args

OutputFormat = Literal["glb", "usdz", "poster", "report"]
ASSET_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
DEFAULT_FORMATS: tuple[OutputFormat, ...] = ("glb", "poster", "report")  # USDZ on request: it needs a bake
FILENAMES: dict[OutputFormat, str] = {"glb": "model.glb", "usdz": "model.usdz", "poster": "poster.png",
                                      "report": "report.json"}
CONTENT_TYPES: dict[OutputFormat, str] = {"glb": "model/gltf-binary", "usdz": "model/vnd.usdz+zip",
                                          "poster": "image/png", "report": "application/json"}


def resolve_formats(requested: Sequence[str] | None,
                    default: Sequence[OutputFormat] = DEFAULT_FORMATS) -> tuple[OutputFormat, ...]:
    """The job's formats (deduplicated, in order) or `default`; ValueError names an unknown one."""
    chosen = tuple(dict.fromkeys(default if requested is None else requested))
    unknown = [name for name in chosen if name not in ASSET_FORMATS]
    if unknown or not chosen:
        raise ValueError(f"formats must be a non-empty subset of {list(ASSET_FORMATS)}, got {list(chosen)}")
    return cast(tuple[OutputFormat, ...], chosen)
