"""Choosing a job's image (pipeline.intake.selection): real local HTTP server, real decode, real rembg with the
tiny ONNX matting model; skipped URLs are recorded and total failure maps to the right code."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import JobRejected, Shop3dError, TransientError
from pipeline.intake.download import DownloadPolicy, allow_only_addresses, make_http_client
from pipeline.intake.images import decode_image, frame_foreground
from pipeline.intake.matting import BackgroundRemover
from pipeline.intake.selection import SelectedImage, select_image
from pipeline.testing.http_server import LocalHTTPServer
from pipeline.testing.matting_model import make_product_photo, make_tiny_remover
from pipeline.testing.redis_server import free_port

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def remover(tmp_path_factory: pytest.TempPathFactory) -> BackgroundRemover:
    return make_tiny_remover(tmp_path_factory.mktemp("rembg-home"))


def select(server: LocalHTTPServer, urls: Sequence[str], remover: BackgroundRemover,
           *extra_ports: int) -> SelectedImage:
    allowed = [("127.0.0.1", server.port)] + [("127.0.0.1", port) for port in extra_ports]
    policy = DownloadPolicy(address_validator=allow_only_addresses(*allowed), attempts=2, retry_delay_s=0.01)

    async def run() -> SelectedImage:
        async with make_http_client(policy) as client:
            return await select_image(client, urls, policy, remover, max_pixels=LIMIT, job_id="job-7")
    return asyncio.run(run())


def select_error(server: LocalHTTPServer, urls: Sequence[str], remover: BackgroundRemover,
                 *extra_ports: int) -> Shop3dError:
    with pytest.raises(Shop3dError) as caught:
        select(server, urls, remover, *extra_ports)
    return caught.value


def cutout_png() -> bytes:
    rgba = np.zeros((120, 160, 4), dtype=np.uint8)
    rgba[30:90, 50:110] = [20, 160, 60, 255]
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def test_first_usable_url_wins_and_earlier_failures_are_recorded(http_server: LocalHTTPServer,
                                                                 remover: BackgroundRemover) -> None:
    good = http_server.serve_bytes("/mug.jpg", make_product_photo(), "image/jpeg")
    missing = http_server.url("/gone.jpg") + "?token=SECRET"
    selected = select(http_server, [missing, good + "?v=2&sig=SECRET"], remover)
    assert selected.index == 1 and selected.url == good and "SECRET" not in str(selected)
    assert [entry["code"] for entry in selected.skipped] == ["image_http_error"]
    assert selected.skipped[0]["url"] == http_server.url("/gone.jpg")
    side = selected.framed.shape[0]
    assert selected.framed.shape == (side, side, 3) and selected.framed.dtype == np.uint8
    assert (selected.framed[0, 0] == 127).all()


def test_each_kind_of_bad_image_is_skipped_with_its_code(http_server: LocalHTTPServer,
                                                         remover: BackgroundRemover) -> None:
    urls = [
        http_server.serve_bytes("/page", b"<html>shop</html>", "text/html"),
        http_server.serve_bytes("/blank.jpg", make_product_photo(with_object=False), "image/jpeg"),
        http_server.serve_bytes("/broken.jpg", make_product_photo()[:300], "image/jpeg"),
        "http://169.254.169.254/latest/meta-data/iam",
        http_server.serve_bytes("/mug.png", make_product_photo(image_format="PNG"), "image/png"),
    ]
    selected = select(http_server, urls, remover)
    assert selected.index == 4
    assert [entry["code"] for entry in selected.skipped] == [
        "content_type_not_allowed", "no_foreground", "image_undecodable", "url_blocked"]


def test_cutout_with_transparency_is_framed_as_is(http_server: LocalHTTPServer, remover: BackgroundRemover) -> None:
    data = cutout_png()
    url = http_server.serve_bytes("/cutout.png", data, "image/png")
    selected = select(http_server, [url], remover)
    expected = frame_foreground(decode_image(data, max_pixels=LIMIT))
    assert selected.index == 0 and selected.skipped == ()
    assert np.array_equal(selected.framed, expected)


def test_single_url_failure_keeps_its_own_code(http_server: LocalHTTPServer, remover: BackgroundRemover) -> None:
    url = http_server.serve_bytes("/broken.jpg", make_product_photo()[:300], "image/jpeg")
    error = select_error(http_server, [url], remover)
    assert isinstance(error, JobRejected) and error.code == "image_undecodable"


def test_single_unreachable_url_stays_transient(http_server: LocalHTTPServer, remover: BackgroundRemover) -> None:
    http_server.serve_bytes("/down.jpg", b"", "text/plain", status=503)
    error = select_error(http_server, [http_server.url("/down.jpg")], remover)
    assert isinstance(error, TransientError) and error.code == "image_unreachable"


def test_several_bad_urls_are_no_usable_image_with_reasons(http_server: LocalHTTPServer,
                                                           remover: BackgroundRemover) -> None:
    http_server.serve_bytes("/down.jpg", b"", "text/plain", status=500)
    urls = [
        http_server.url("/gone.jpg?token=SECRET"),
        http_server.url("/down.jpg"),
        http_server.serve_bytes("/bomb.png", _png_header_only(20000, 20000), "image/png"),
        "file:///etc/passwd",
    ]
    error = select_error(http_server, urls, remover)
    assert isinstance(error, JobRejected) and error.code == "no_usable_image"
    codes = [entry["code"] for entry in error.details["skipped"]]
    assert codes == ["image_http_error", "image_unreachable", "image_too_many_pixels", "url_not_allowed"]
    assert "SECRET" not in str(error.to_dict())


def test_all_transient_failures_are_retried_as_a_job(http_server: LocalHTTPServer,
                                                     remover: BackgroundRemover) -> None:
    closed = free_port()
    http_server.serve_bytes("/down.jpg", b"", "text/plain", status=502)
    error = select_error(http_server, [http_server.url("/down.jpg"), f"http://127.0.0.1:{closed}/a.jpg"],
                         remover, closed)
    assert isinstance(error, TransientError) and error.code == "image_unreachable"
    assert [entry["code"] for entry in error.details["skipped"]] == ["image_unreachable"] * 2


def test_empty_url_list_is_a_programming_error(http_server: LocalHTTPServer, remover: BackgroundRemover) -> None:
    with pytest.raises(ValueError):
        select(http_server, [], remover)


def test_decode_runs_off_the_event_loop(http_server: LocalHTTPServer, remover: BackgroundRemover) -> None:
    """A ticker on the loop keeps ticking while a large photo is decoded and matted."""
    url = http_server.serve_bytes("/big.png", make_product_photo(2400, 1800, image_format="PNG"), "image/png")
    policy = DownloadPolicy(address_validator=allow_only_addresses(("127.0.0.1", http_server.port)))

    async def run() -> int:
        ticks = 0
        done = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        async with make_http_client(policy) as client:
            await select_image(client, [url], policy, remover, max_pixels=LIMIT)
        done.set()
        await ticker
        return ticks

    assert asyncio.run(run()) > 20


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height with almost no data: a decompression-bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
