"""`shop3d generate`: photos (paths or URLs) -> `model.glb` + `summary.json` in one directory, in-process.

Local paths become `file://` URLs that only this command's fetcher reads (the service never does: its
downloader refuses every scheme but http(s)). URLs go through the same SSRF-safe downloader as jobs.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from pipeline.delivery.storage import DirectoryStore
from pipeline.errors import JobRejected
from pipeline.intake.download import DownloadPolicy, fetch_image
from pipeline.intake.selection import Fetcher
from pipeline.jobs.envelopes import Job
from pipeline.jobs.state import JobResult
from pipeline.run.runner import Services, process_job
from pipeline.run.stages import ProgressSink
from pipeline.settings import Quality, Settings


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
    """summary.json: the assets, the model and QA stats, per-stage seconds and which image was used."""
    stats = dict(result.stats)
    timings, image = stats.pop("timings_s", {}), stats.pop("image", {})
    return {"job_id": job.job_id, "quality": job.quality, "assets": dict(result.assets), "stats": stats,
            "timings_s": timings, "image": image}


async def generate(sources: Sequence[str], quality: Quality | None, out_dir: Path, settings: Settings, *,
                   handle: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Run one local job over `sources`; writes its files and summary.json under `out_dir`.

    `quality` None means DEFAULT_QUALITY. Only `out_dir` is written: no store the settings name is made.
    """
    urls = [source_to_url(source) for source in sources]
    job = Job(job_id=str(uuid.uuid4()), shop="local", product_id="local",
              product_handle=handle or handle_from_source(sources[0]), image_urls=tuple(urls), quality=quality)
    services = Services.from_settings(settings, store=DirectoryStore(out_dir))
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
