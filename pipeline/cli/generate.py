"""`shop3d generate`: photos (paths or URLs) -> the job's files + `summary.json` in one directory, in-process.

Local paths become `file://` URLs that only this command's fetcher reads (the service never does: its
downloader refuses every scheme but http(s)). URLs go through the same SSRF-safe downloader as jobs.
`--formats`, `--height/--width/--depth` and `--title` become the job's `formats` and `metadata`, exactly
as a queue job carries them, so the one job path sizes the model and writes the files.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from pipeline.assets.formats import OutputFormat, resolve_formats
from pipeline.assets.geometry import MAX_DIMENSION_M, UNIT_TO_METRES
from pipeline.delivery.storage import DirectoryStore
from pipeline.errors import JobRejected
from pipeline.intake.download import DownloadPolicy, fetch_image
from pipeline.intake.matting import MattingModelError
from pipeline.intake.selection import Fetcher
from pipeline.jobs.envelopes import Job, validate_job
from pipeline.jobs.state import JobResult
from pipeline.model import CheckpointError, ConfigError, ModelUnavailableError
from pipeline.run.runner import Services, process_job
from pipeline.run.stages import ProgressSink
from pipeline.settings import Quality, Settings

_LENGTH = re.compile(r'\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z"]+)\s*')


class ServicesUnavailable(RuntimeError):
    """The model, matting model or device the settings name cannot be loaded on this machine.

    A problem of the machine or its settings, not of the job; the message is one line and holds no secret.
    """


def parse_length(text: str) -> float:
    """'11cm', '0.11 m', '110mm', '4.3in', '1ft' -> metres (to the nanometre); ValueError says what is wrong.

    The unit is required: a bare '11' could be any of them. Units and range are the job metadata's own.
    """
    match = _LENGTH.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a length with a unit, like 11cm, 0.11m, 110mm or 4.3in")
    factor = UNIT_TO_METRES.get(match.group(2).lower())
    if factor is None:
        raise ValueError(f"unknown unit {match.group(2)[:20]!r} in {text[:40]!r}; use m, cm, mm, in or ft")
    metres = round(float(match.group(1)) * factor, 9)
    if not 0 < metres <= MAX_DIMENSION_M:
        raise ValueError(f"{text[:40]!r} is outside (0, {MAX_DIMENSION_M:g} m]")
    return metres


def parse_formats(text: str) -> tuple[OutputFormat, ...]:
    """'glb,usdz' -> ('glb', 'usdz'), deduplicated in order; ValueError names the known formats (the job's rule)."""
    return resolve_formats([name.strip().lower() for name in text.split(",") if name.strip()])


def job_metadata(title: str | None = None, *, width_m: float | None = None, height_m: float | None = None,
                 depth_m: float | None = None) -> dict[str, Any]:
    """A job's `metadata` as the queue carries it: `productTitle`, and `dimensions` all in one unit (metres),
    from which the exporter scales the model to real size (height wins when given)."""
    metadata: dict[str, Any] = {"productTitle": title} if title else {}
    sizes = {axis: size for axis, size in (("width", width_m), ("height", height_m), ("depth", depth_m))
             if size is not None}
    if sizes:
        metadata["dimensions"] = {**sizes, "unit": "m"}
    return metadata


def source_to_url(source: str) -> str:
    """An http(s) URL stays; anything else must be an existing file and becomes a file:// URL."""
    if source.startswith(("http://", "https://")):
        return source
    path = Path(source).expanduser()
    if not path.is_file():
        raise JobRejected("url_not_allowed", f"{source!r} is neither an http(s) URL nor an existing file")
    return path.resolve().as_uri()


def handle_from_source(source: str) -> str:
    """A storage-safe product handle from a file or URL name: 'Red Mug.JPG' -> 'red-mug'."""
    stem = Path(urlsplit(source).path).stem or "product"
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:60] or "product"


def local_or_remote(client: httpx.AsyncClient, policy: DownloadPolicy) -> Fetcher:
    """Reads file:// URLs from disk (capped like downloads) and fetches the rest with the safe downloader."""

    async def fetch(url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme != "file":
            return await fetch_image(client, url, policy)
        return await asyncio.to_thread(read_local_image, Path(unquote(parts.path)), policy.max_bytes)

    return fetch


def read_local_image(path: Path, max_bytes: int) -> bytes:
    """A local photo's bytes under the same byte cap as downloads; empty or oversized files are refused."""
    if path.stat().st_size > max_bytes:
        raise JobRejected("image_too_large", f"{path.name} is over the {max_bytes}-byte cap")
    data = path.read_bytes()
    if not data:
        raise JobRejected("empty_image", f"{path.name} is empty")
    return data


def progress_bar(enabled: bool) -> tuple[ProgressSink, Callable[[], None]]:
    """A tqdm bar on stderr moved by (stage, percent) reports, and its closer."""
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", disable=not enabled, bar_format="{desc:<12} {bar} {n_fmt}% [{elapsed}]")

    async def update(stage: str, percent: int) -> None:
        bar.set_description_str(stage)
        bar.update(max(0, percent - bar.n))

    return update, bar.close


def summarize(job: Job, result: JobResult) -> dict[str, Any]:
    """summary.json: the assets, the job's metadata, the model and QA stats (formats, size, scale basis),
    per-stage seconds and which image was used."""
    stats = dict(result.stats)
    timings, image = stats.pop("timings_s", {}), stats.pop("image", {})
    return {"job_id": job.job_id, "quality": job.quality, "metadata": job.metadata, "assets": dict(result.assets),
            "stats": stats, "timings_s": timings, "image": image}


def startup_problem(exc: Exception) -> str:
    """One line for a failure to load what the settings name, with the setting to look at."""
    if isinstance(exc, MattingModelError):
        label = "matting model unavailable (REMBG_MODEL)"
    elif isinstance(exc, (ModelUnavailableError, CheckpointError, ConfigError, FileNotFoundError)):
        label = "model unavailable (TSR_MODEL)"
    elif isinstance(exc, ValueError):   # resolve_device, set_num_threads
        label = "bad settings"
    else:
        label = "cannot start"
    return " ".join(f"{label}: {exc}".split())


def open_services(settings: Settings, out_dir: Path) -> Services:
    """The model and matting session the settings name, storing into `out_dir`; ServicesUnavailable (chained
    to the cause) when this machine cannot load them: offline without a cached model, a missing directory."""
    try:
        return Services.from_settings(settings, store=DirectoryStore(out_dir))
    except (ModelUnavailableError, CheckpointError, MattingModelError, OSError, ValueError) as exc:
        raise ServicesUnavailable(startup_problem(exc)) from exc


async def generate(sources: Sequence[str], quality: Quality | None, out_dir: Path, settings: Settings, *,
                   handle: str | None = None, formats: Sequence[OutputFormat] | None = None,
                   metadata: Mapping[str, Any] | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Run one local job over `sources`; writes its files and summary.json under `out_dir`.

    `quality`/`formats` None mean DEFAULT_QUALITY/DEFAULT_FORMATS; `metadata` is the job's (see job_metadata).
    Only `out_dir` is written: no store the settings name is made. Raises JobRejected, ServicesUnavailable.
    """
    urls = [source_to_url(source) for source in sources]
    job = validate_job({"job_id": str(uuid.uuid4()), "shop": "local", "product_id": "local",
                        "product_handle": handle or handle_from_source(sources[0]), "image_urls": urls,
                        "metadata": dict(metadata or {}), "quality": quality,
                        "formats": list(formats) if formats else None})
    services = open_services(settings, out_dir)
    services.intake.fetch = local_or_remote(services.intake.http, services.intake.policy)
    update, close = progress_bar(show_progress)
    try:
        result = await process_job(job, services, update)
    finally:
        close()
        await services.aclose()
    summary = summarize(services.defaults.apply(job), result)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
