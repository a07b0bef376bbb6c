"""Finding the checkpoint files and the ViT config: a local directory or the Hugging Face hub/cache.

huggingface_hub reads HF_HOME / HF_HUB_OFFLINE once, at its import; we read them at call time and pass
`cache_dir` / `local_files_only` explicitly, so a process that changes them later is still honoured.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.model.config import DINO_VITB16, DINO_VITB16_NAME, ViTConfig, parse_vit_config

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.yaml"
CHECKPOINT_FILENAME = "model.ckpt"
# Our extension: the ViT architecture beside config.yaml, so a checkpoint whose ViT is not
# facebook/dino-vitb16 (e.g. a random tiny one) loads offline without an HF cache.
VIT_CONFIG_FILENAME = "vit_config.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = {"1", "on", "yes", "true"}


class ModelUnavailableError(RuntimeError):
    """The model (or its ViT config) is neither local nor downloadable (offline, no network, no such repo)."""


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    config_path: Path
    checkpoint_path: Path


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The HF hub cache: `cache_dir`, else $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value now."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in _TRUE


def download_file(repo_id: str, filename: str, cache_dir: str | Path | None, what: str) -> Path:
    """One file of a hub repo through the HF cache (tqdm progress); ModelUnavailableError if unreachable."""
    from huggingface_hub import hf_hub_download  # soft dependency: needed only for hub ids
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hub_cache_dir(cache_dir)
    offline = hub_offline()
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=cache,
                                    local_files_only=offline))
    except LocalEntryNotFoundError as exc:
        reason = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelUnavailableError(
            f"{what}: {repo_id}/{filename} is not in the Hugging Face cache {cache} and {reason}. "
            "Set TSR_MODEL to a local directory holding config.yaml and model.ckpt.") from exc
    except HfHubHTTPError as exc:
        raise ModelUnavailableError(
            f"{what}: the hub refused {repo_id}/{filename} ({type(exc).__name__}). "
            "Check the model id, or set TSR_MODEL to a local directory.") from exc


def locate_model_files(name_or_dir: str | Path, cache_dir: str | Path | None = None) -> ModelFiles:
    """config.yaml + model.ckpt of a local directory, or of a hub id (downloaded into / read from the cache)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        files = ModelFiles(path, path / CONFIG_FILENAME, path / CHECKPOINT_FILENAME)
        for needed in (files.config_path, files.checkpoint_path):
            if not needed.is_file():
                raise FileNotFoundError(f"model directory {path} has no {needed.name}")
        return files
    name = str(name_or_dir)
    if not _HUB_ID.fullmatch(name) or name.startswith("."):
        raise FileNotFoundError(f"{name!r} is neither a model directory nor a hub id like 'org/name'")
    config_path = download_file(name, CONFIG_FILENAME, cache_dir, "TripoSR config")
    checkpoint_path = download_file(name, CHECKPOINT_FILENAME, cache_dir, "TripoSR weights")
    return ModelFiles(config_path.parent, config_path, checkpoint_path)


def read_vit_config(vit_name: str, model_dir: Path, cache_dir: str | Path | None = None) -> ViTConfig:
    """The ViT architecture: known for facebook/dino-vitb16 (never fetched), else `vit_config.json`
    beside config.yaml, else the repo's `config.json` through the HF cache (honours HF_HOME/HF_HUB_OFFLINE).
    """
    if vit_name == DINO_VITB16_NAME:
        return DINO_VITB16
    local = model_dir / VIT_CONFIG_FILENAME
    source = local if local.is_file() else download_file(vit_name, "config.json", cache_dir, "ViT config")
    logger.debug("ViT config for %s read from %s", vit_name, source)
    return parse_vit_config(json.loads(source.read_text(encoding="utf-8")))
