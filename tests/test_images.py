"""Decode and framing (pipeline.intake.images): modes, EXIF, bombs, broken files, and pixel parity of the
official framing on the fixture's `preprocess_*` arrays."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import JobRejected
from pipeline.intake.images import decode_image, frame_foreground, has_real_transparency, to_model_input

LIMIT = 40_000_000


def encode(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, rows: bytes = b"") -> bytes:
    """A PNG whose IHDR says width x height, with `rows` (filter bytes included) as its only IDAT data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def decode_error(data: bytes, **limits: int) -> JobRejected:
    with pytest.raises(JobRejected) as caught:
        decode_image(data, max_pixels=limits.get("max_pixels", LIMIT), min_side=limits.get("min_side", 16))
    return caught.value


# --- modes -------------------------------------------------------------------------------------

def test_rgb_and_rgba_decode_exactly() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba = decode_image(encode(Image.fromarray(pixels, "RGBA")), max_pixels=LIMIT)
    assert rgba.shape == (20, 30, 4) and rgba.dtype == np.uint8 and np.array_equal(rgba, pixels)
    rgb = decode_image(encode(Image.fromarray(pixels[..., :3], "RGB")), max_pixels=LIMIT)
    assert np.array_equal(rgb[..., :3], pixels[..., :3]) and (rgb[..., 3] == 255).all()


def test_gray_and_gray_alpha_become_rgba() -> None:
    gray = decode_image(encode(Image.new("L", (16, 16), 77)), max_pixels=LIMIT)
    assert (gray[0, 0] == [77, 77, 77, 255]).all()
    gray_alpha = decode_image(encode(Image.new("LA", (16, 16), (100, 50))), max_pixels=LIMIT)
    assert (gray_alpha[0, 0] == [100, 100, 100, 50]).all()
    bilevel = decode_image(encode(Image.new("1", (16, 16), 1)), max_pixels=LIMIT)
    assert (bilevel == 255).all()


def test_palette_with_transparency_keeps_its_transparent_index() -> None:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    for x in range(8):
        image.putpixel((x, 0), 0)
    rgba = decode_image(encode(image, transparency=0), max_pixels=LIMIT)
    assert (rgba[0, :8, 3] == 0).all() and (rgba[1, 0] == [200, 30, 30, 255]).all()


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    rgba = decode_image(encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG", quality=95),
                        max_pixels=LIMIT)
    assert np.abs(rgba[16, 16].astype(int) - [0, 255, 255, 255]).max() <= 3


def test_sixteen_bit_gray_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 25700, 65535] * 6] * 16, dtype=np.uint16)
    rgba = decode_image(encode(Image.fromarray(values)), max_pixels=LIMIT)
    assert list(rgba[0, :3, 0]) == [0, 100, 255] and (rgba[..., 3] == 255).all()


def test_sixteen_bit_rgb_png_decodes_to_eight_bits() -> None:
    pixel = struct.pack(">HHH", 0xFF00, 0x8000, 0x0000)
    rows = (b"\x00" + pixel * 16) * 16
    rgba = decode_image(raw_png(16, 16, bit_depth=16, color_type=2, rows=rows), max_pixels=LIMIT)
    assert list(rgba[5, 5]) == [255, 128, 0, 255]


def test_lossless_webp_with_alpha_round_trips() -> None:
    pixels = np.zeros((24, 24, 4), dtype=np.uint8)
    pixels[4:20, 4:20] = [10, 200, 30, 255]
    rgba = decode_image(encode(Image.fromarray(pixels, "RGBA"), "WEBP", lossless=True), max_pixels=LIMIT)
    assert np.array_equal(rgba[..., 3], pixels[..., 3]) and np.array_equal(rgba[10, 10], pixels[10, 10])


def test_exif_orientation_is_applied() -> None:
    """Orientation 6 (rotate 90° clockwise to display): a 60x20 red|blue JPEG becomes 20 wide, red on top."""
    image = Image.new("RGB", (60, 20), (220, 20, 20))
    image.paste((20, 20, 220), (30, 0, 60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = decode_image(encode(image, "JPEG", quality=95, exif=exif.tobytes()), max_pixels=LIMIT)
    assert rgba.shape == (60, 20, 4)
    assert rgba[10, 10, 0] > 180 and rgba[50, 10, 2] > 180


# --- bad inputs ----------------------------------------------------------------------------------

def test_header_claiming_400_megapixels_is_refused_at_open() -> None:
    assert decode_error(raw_png(20000, 20000, rows=b"\x00" * 64)).code == "image_too_many_pixels"


def test_header_over_our_limit_but_under_pillows_is_refused_before_load() -> None:
    error = decode_error(raw_png(7000, 7000, rows=b"\x00" * 64))
    assert error.code == "image_too_many_pixels" and error.details == {"width": 7000, "height": 7000}


def test_pillow_bomb_warning_range_is_an_error_too() -> None:
    """100 Mpx is above Pillow's warning threshold but below its error; it must still be refused."""
    error = decode_error(raw_png(10000, 10000, rows=b"\x00" * 64), max_pixels=200_000_000)
    assert error.code == "image_too_many_pixels"


def test_small_pixel_limit_applies_to_a_real_image() -> None:
    assert decode_error(encode(Image.new("RGB", (40, 40))), max_pixels=1000).code == "image_too_many_pixels"


def test_truncated_jpeg_is_undecodable() -> None:
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noisy), "JPEG", quality=90)
    assert decode_error(data[: len(data) // 2]).code == "image_undecodable"


def test_truncated_png_is_undecodable() -> None:
    noisy = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noisy))
    assert decode_error(data[: len(data) // 2]).code == "image_undecodable"


@pytest.mark.parametrize("data", [
    b"",
    b"\x00" * 512,
    b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>",
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>',
    b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
    b"\xff\xd8\xff\xe0" + b"\x00" * 50,
], ids=["empty", "zeros", "html", "svg", "png-signature-then-junk", "jpeg-magic-then-zeros"])
def test_garbage_is_undecodable(data: bytes) -> None:
    assert decode_error(data).code == "image_undecodable"


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "TIFF"])
def test_formats_outside_the_allowlist_are_undecodable(image_format: str) -> None:
    assert decode_error(encode(Image.new("RGB", (32, 32)), image_format)).code == "image_undecodable"


@pytest.mark.parametrize("size", [(1, 1), (15, 400), (400, 15)])
def test_tiny_images_are_too_small(size: tuple[int, int]) -> None:
    assert decode_error(encode(Image.new("RGB", size))).code == "image_too_small"


# --- framing -----------------------------------------------------------------------------------

def test_frame_foreground_matches_the_official_fixture_to_the_pixel(tiny_fixture_dir: Path) -> None:
    reference = np.load(tiny_fixture_dir / "reference.npz")
    framed = frame_foreground(reference["preprocess_rgba_input"], 0.85)
    assert framed.shape == (217, 217, 3) and framed.dtype == np.uint8
    assert np.array_equal(framed, reference["preprocess_output"])


def test_decoded_fixture_png_frames_to_the_fixture_output_png(tiny_fixture_dir: Path) -> None:
    rgba = decode_image((tiny_fixture_dir / "preprocess_input_rgba.png").read_bytes(), max_pixels=LIMIT)
    expected = np.asarray(Image.open(tiny_fixture_dir / "preprocess_output.png").convert("RGB"))
    assert np.array_equal(frame_foreground(rgba), expected)


def test_frame_foreground_geometry_by_hand() -> None:
    """Opaque rows 2..5, cols 3..8 -> crop 3x5 (last row/col dropped) -> 5x5 square, one row of
    padding on top -> int(5 / 0.5) = 10 side, margins 2 top/left, 3 bottom/right."""
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[2:6, 3:9] = [255, 0, 0, 255]
    framed = frame_foreground(rgba, foreground_ratio=0.5)
    assert framed.shape == (10, 10, 3)
    red = np.all(framed == [255, 0, 0], axis=-1)
    rows, cols = np.nonzero(red)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 5, 2, 6)
    assert (framed[~red] == 127).all()  # 0.5 gray truncated


def test_partial_alpha_is_composited_on_gray() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[5:15, 5:15] = [255, 255, 255, 128]
    framed = frame_foreground(rgba, 1.0)
    alpha = np.float32(128) / np.float32(255)
    expected = int((np.float32(1.0) * alpha + (np.float32(1.0) - alpha) * np.float32(0.5)) * np.float32(255))
    assert (framed == expected).all()


def test_empty_alpha_is_no_foreground() -> None:
    rgba = np.full((32, 32, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 0
    with pytest.raises(JobRejected) as caught:
        frame_foreground(rgba)
    assert caught.value.code == "no_foreground"


def test_single_pixel_foreground_is_no_foreground() -> None:
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[10, 10] = 255
    with pytest.raises(JobRejected) as caught:
        frame_foreground(rgba)
    assert caught.value.code == "no_foreground"


def test_frame_foreground_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        frame_foreground(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        frame_foreground(np.full((8, 8, 4), 255, dtype=np.uint8), foreground_ratio=0.0)


def test_has_real_transparency() -> None:
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    assert not has_real_transparency(rgba)
    rgba[3, 3, 3] = 254
    assert has_real_transparency(rgba)


def test_to_model_input_scales_to_unit_float() -> None:
    framed = np.array([[[0, 127, 255]]], dtype=np.uint8)
    model_input = to_model_input(framed)
    assert model_input.dtype == np.float32 and model_input.shape == (1, 1, 3)
    assert np.allclose(model_input, [[[0.0, 127 / 255, 1.0]]])
    with pytest.raises(ValueError):
        to_model_input(framed.astype(np.float32))
