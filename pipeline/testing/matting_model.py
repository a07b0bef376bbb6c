"""A tiny real matting model and synthetic product photos, so matting runs offline in tests.

`write_tiny_matting_onnx` builds, with onnx.helper (no torch), a graph with u2net's interface:
input "input.1" (1, 3, 320, 320), ImageNet-normalised by rembg, first output (1, 1, 320, 320) in
[0, 1]. The output is a real function of the pixels: sigmoid(k * (distance from white - t)), so a
coloured object on a white background comes out as foreground after rembg's min-max normalisation.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from pipeline.intake.matting import BackgroundRemover

# rembg's u2net normalisation (sessions/u2net_custom.py): x / max(x), then (x - mean) / std.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MODEL_SIDE = 320
# Summed |1 - channel| over RGB above which a pixel counts as object; JPEG noise on white stays
# far below it, a saturated colour is around 1.5-2.5.
DISTANCE_THRESHOLD = 0.15
SHARPNESS = 40.0


def write_tiny_matting_onnx(path: Path) -> Path:
    """Write the tiny u2net-interface model to `path` (parents created); returns `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    white = ((1.0 - IMAGENET_MEAN) / IMAGENET_STD).reshape(1, 3, 1, 1)
    constants: dict[str, np.ndarray] = {
        "white": white.astype(np.float32),
        "std": IMAGENET_STD.reshape(1, 3, 1, 1),
        "axes": np.array([1], dtype=np.int64),
        "threshold": np.array(DISTANCE_THRESHOLD, dtype=np.float32),
        "sharpness": np.array(SHARPNESS, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Sub", ["input.1", "white"], ["offset"]),          # normalised pixel - white
        helper.make_node("Abs", ["offset"], ["abs_offset"]),
        helper.make_node("Mul", ["abs_offset", "std"], ["channel_distance"]),  # back to [0, 1] units
        helper.make_node("ReduceSum", ["channel_distance", "axes"], ["distance"], keepdims=1),
        helper.make_node("Sub", ["distance", "threshold"], ["margin"]),
        helper.make_node("Mul", ["margin", "sharpness"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["d0"]),
    ]
    shape_in = [1, 3, MODEL_SIDE, MODEL_SIDE]
    shape_out = [1, 1, MODEL_SIDE, MODEL_SIDE]
    graph = helper.make_graph(
        nodes, "tiny_matting",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, shape_out)],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="shop3d-tests")
    model.ir_version = 8  # opset 17's IR version; readable by every onnxruntime we support
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def product_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The default object box (left, top, right, bottom), inclusive, of `make_product_photo`."""
    return (int(width * 0.3), int(height * 0.2), int(width * 0.7), int(height * 0.85))


def make_product_photo(width: int = 320, height: int = 240, *, box: tuple[int, int, int, int] | None = None,
                       color: tuple[int, int, int] = (200, 40, 40), image_format: str = "JPEG",
                       with_object: bool = True) -> bytes:
    """A synthetic product photo: a coloured rounded object with a label on pure white, encoded.

    `box` is the object's (left, top, right, bottom), inclusive; `with_object=False` gives a blank
    white photo (nothing to cut out).
    """
    image = Image.new("RGB", (width, height), (255, 255, 255))
    if with_object:
        left, top, right, bottom = box or product_box(width, height)
        draw = ImageDraw.Draw(image)
        radius = max(1, min(right - left, bottom - top) // 5)
        draw.rounded_rectangle((left, top, right, bottom), radius=radius, fill=color)
        inset_x, inset_y = (right - left) // 4, (bottom - top) // 3
        draw.rectangle((left + inset_x, top + inset_y, right - inset_x, bottom - inset_y), fill=(30, 60, 160))
    buffer = io.BytesIO()
    if image_format.upper() == "JPEG":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format=image_format.upper())
    return buffer.getvalue()


def make_tiny_remover(home: Path) -> BackgroundRemover:
    """The tiny model written under `home` (used as U2NET_HOME while loading) and loaded through
    rembg's custom-model path, exactly as REMBG_MODEL=<path>.onnx is in production."""
    from pipeline.intake.matting import BackgroundRemover

    model_path = write_tiny_matting_onnx(home / "models" / "tiny" / "tiny.onnx")
    saved = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(home)
    try:
        return BackgroundRemover(str(model_path))
    finally:
        if saved is None:
            del os.environ["U2NET_HOME"]
        else:
            os.environ["U2NET_HOME"] = saved
