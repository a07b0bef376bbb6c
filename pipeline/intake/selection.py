"""From a job's image URLs to the one framed picture the model sees.

The first URL that downloads, decodes and has a foreground wins; why the others were skipped is
kept for the job's record. Decode and matting are CPU-bound and run in worker threads so the event
loop (and the queue heartbeat on it) keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from pipeline.errors import JobRejected, Shop3dError, TransientError
from pipeline.intake.download import DownloadPolicy, fetch_image
from pipeline.intake.images import decode_image, frame_foreground
from pipeline.intake.urls import redact_url

log = logging.getLogger(__name__)

# Replaces the downloader for one caller: `shop3d generate` reads local files through it.
Fetcher = Callable[[str], Awaitable[bytes]]


class BackgroundRemoval(Protocol):
    """What intake needs from matting (`pipeline.intake.matting.BackgroundRemover` provides it)."""

    def remove_background(self, rgba: np.ndarray, *, job_id: str = "-") -> np.ndarray: ...


@dataclass(frozen=True)
class SelectedImage:
    """The chosen image: `framed` (S, S, 3) uint8 on gray, its URL (query stripped) and position, and
    `skipped`: one {url, code, message} per earlier URL that could not be used."""

    framed: np.ndarray
    url: str
    index: int
    skipped: tuple[dict[str, Any], ...] = ()


async def select_image(client: httpx.AsyncClient, urls: Sequence[str], policy: DownloadPolicy,
                       remover: BackgroundRemoval, *, max_pixels: int, foreground_ratio: float = 0.85,
                       job_id: str = "-", fetch: Fetcher | None = None) -> SelectedImage:
    """Try `urls` in order and frame the first usable image (`fetch` replaces the downloader if given).

    When all fail: a single URL re-raises its own error; several raise JobRejected("no_usable_image")
    with per-URL reasons in `details["skipped"]`, or TransientError("image_unreachable") when every
    failure was transient (so the job is retried).
    """
    if not urls:
        raise ValueError("select_image needs at least one URL")
    skipped: list[dict[str, Any]] = []
    failures: list[Shop3dError] = []
    for index, url in enumerate(urls):
        safe = redact_url(url)
        try:
            data = await fetch(url) if fetch else await fetch_image(client, url, policy, job_id=job_id)
            framed = await prepare_image(data, remover, max_pixels=max_pixels,
                                         foreground_ratio=foreground_ratio, job_id=job_id)
        except Shop3dError as exc:
            log.info("job %s: image %d (%s) skipped: %s %s", job_id, index, safe, exc.code, exc.message)
            failures.append(exc)
            skipped.append({"url": safe, "code": exc.code, "message": exc.message})
            continue
        log.info("job %s: using image %d (%s), %d skipped", job_id, index, safe, len(skipped))
        return SelectedImage(framed=framed, url=safe, index=index, skipped=tuple(skipped))
    raise _combined_failure(failures, skipped)


async def prepare_image(data: bytes, remover: BackgroundRemoval, *, max_pixels: int,
                        foreground_ratio: float = 0.85, job_id: str = "-") -> np.ndarray:
    """Decode, matte and frame one image's bytes; raises the Shop3dError of the step that failed."""
    rgba = await asyncio.to_thread(decode_image, data, max_pixels=max_pixels)
    matted = await asyncio.to_thread(remover.remove_background, rgba, job_id=job_id)
    return await asyncio.to_thread(frame_foreground, matted, foreground_ratio)


def _combined_failure(failures: list[Shop3dError], skipped: list[dict[str, Any]]) -> Shop3dError:
    """The one error that stands for every URL failing (see `select_image`)."""
    if len(failures) == 1:
        return failures[0]
    if all(isinstance(exc, TransientError) for exc in failures):
        return TransientError("image_unreachable", f"none of the {len(failures)} image URLs could be reached",
                              skipped=skipped)
    return JobRejected("no_usable_image", f"none of the {len(failures)} image URLs gave a usable image",
                       skipped=skipped)
