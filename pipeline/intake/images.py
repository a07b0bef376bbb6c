"""Image bytes to the model's input picture: safe decode to RGBA, then the official framing (SPEC §3–4).

Pure functions on bytes and arrays; CPU-bound, so async callers run them via `asyncio.to_thread`.
The framing keeps the official `resize_foreground` + gray composite exactly, off-by-one included,
so our inputs match the reference pipeline to the pixel.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import JobRejected

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
BACKGROUND_GRAY = 0.5  # the official composite colour; truncated to 127 in uint8

# What a malformed file can make Pillow's decoders raise besides OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError,
                  TypeError, KeyError)


def decode_image(data: bytes, *, max_pixels: int, min_side: int = 16) -> np.ndarray:
    """Decode JPEG/PNG/WEBP bytes into an (H, W, 4) uint8 RGBA array, EXIF orientation applied.

    The pixel count is checked on the header before any pixel is decoded. Raises JobRejected
    `image_undecodable`, `image_too_many_pixels` or `image_too_small`.
    """
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; a bomb must be an error. Our own header
        # check below is the real guard (catch_warnings is process-global, so not relied on alone).
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = _open_checked(data, max_pixels=max_pixels, min_side=min_side)
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise JobRejected("image_too_many_pixels", "image exceeds the decoder's pixel limit") from None
        except _DECODE_ERRORS as exc:
            raise JobRejected("image_undecodable",
                              f"image data is truncated or corrupt ({type(exc).__name__})") from None
    image = _apply_exif_orientation(image)
    return to_rgba_array(image)


def _open_checked(data: bytes, *, max_pixels: int, min_side: int) -> Image.Image:
    """Open (header only) with the format allowlist and check the size before decoding pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise JobRejected("image_undecodable",
                          f"data is not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise JobRejected("image_too_many_pixels", f"image is {width}x{height} = {width * height} pixels, "
                          f"over the limit of {max_pixels}", width=width, height=height)
    if min(width, height) < min_side:
        raise JobRejected("image_too_small", f"image is {width}x{height}; each side must be at least "
                          f"{min_side} pixels", width=width, height=height)
    return image


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    # A broken EXIF block should not cost the shop its product: keep the pixels as stored.
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        return image


def to_rgba_array(image: Image.Image) -> np.ndarray:
    """Any decoded PIL mode as an (H, W, 4) uint8 RGBA array; 16/32-bit gray is scaled, not clipped."""
    if image.mode.startswith("I;16") or image.mode == "I":
        # Pillow's convert() clips 16-bit gray at 255 (a white image); scale 0..65535 to 0..255.
        wide = np.asarray(image, dtype=np.int64)
        gray = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    elif image.mode == "CMYK":
        image = image.convert("RGB")
    if image.mode != "RGBA":
        # P with a transparency entry, LA, PA, L, 1, RGB: convert() carries transparency into alpha.
        image = image.convert("RGBA")
    return np.asarray(image, dtype=np.uint8).copy()


def has_real_transparency(rgba: np.ndarray) -> bool:
    """True when any alpha value is below 255: the photo is already a cut-out, matting is skipped."""
    _require_rgba(rgba)
    return bool(rgba[..., 3].min() < 255)


def frame_foreground(rgba: np.ndarray, foreground_ratio: float = 0.85) -> np.ndarray:
    """The official `resize_foreground` + gray composite: (H, W, 4) uint8 -> (S, S, 3) uint8.

    Crop to the alpha > 0 box (last row/column dropped, as upstream), pad to a centred square, pad
    again to int(side / ratio), composite on 0.5 gray. Raises JobRejected `no_foreground` when
    nothing of the foreground is left.
    """
    _require_rgba(rgba)
    if not 0.0 < foreground_ratio <= 1.0:
        raise ValueError(f"foreground_ratio must be in (0, 1], got {foreground_ratio}")
    rows, cols = np.nonzero(rgba[..., 3] > 0)
    if rows.size == 0:
        raise JobRejected("no_foreground", "no foreground found in the image after background removal")
    # Upstream slices [min:max], dropping the box's last row and column; kept for parity.
    crop = rgba[rows.min():rows.max(), cols.min():cols.max()]
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        # A one-pixel-thin foreground leaves an empty crop: upstream would emit a blank gray image.
        raise JobRejected("no_foreground", "the foreground is too thin to frame (one pixel)")
    side = max(crop.shape[0], crop.shape[1])
    square = _pad_centred(crop, side)
    framed = _pad_centred(square, int(side / foreground_ratio))
    return composite_on_gray(framed)


def _pad_centred(image: np.ndarray, side: int) -> np.ndarray:
    """Zero-pad (transparent) to side x side, the smaller half of each margin on top/left."""
    pad_h, pad_w = side - image.shape[0], side - image.shape[1]
    return np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                  mode="constant", constant_values=0)


def composite_on_gray(rgba: np.ndarray) -> np.ndarray:
    """Float32 `rgb * a + (1 - a) * 0.5`, then a truncating cast: (H, W, 4) uint8 -> (H, W, 3) uint8."""
    values = rgba.astype(np.float32) / 255.0
    alpha = values[..., 3:4]
    rgb = values[..., :3] * alpha + (1.0 - alpha) * BACKGROUND_GRAY
    composited: np.ndarray = (rgb * 255.0).astype(np.uint8)
    return composited


def to_model_input(framed: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (S, S, 3) float32 in [0, 1]; the model resizes to its cond size itself."""
    if framed.ndim != 3 or framed.shape[2] != 3 or framed.dtype != np.uint8:
        raise ValueError(f"expected an (S, S, 3) uint8 image, got {framed.shape} {framed.dtype}")
    scaled: np.ndarray = framed.astype(np.float32) / np.float32(255.0)
    return scaled


def _require_rgba(rgba: np.ndarray) -> None:
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 4) uint8 RGBA array, got {rgba.shape} {rgba.dtype}")
