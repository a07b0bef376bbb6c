"""Background removal (pipeline.intake.matting) through real rembg + onnxruntime with a tiny u2net-interface
ONNX model (tests/support/matting_model.py), loaded the way REMBG_MODEL loads a model in production."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import JobRejected
from pipeline.intake.images import decode_image, frame_foreground
from pipeline.intake.matting import BackgroundRemover, MattingModelError
from pipeline.testing.matting_model import make_product_photo, make_tiny_remover, write_tiny_matting_onnx
from pipeline.testing.redis_server import free_port

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def remover(tmp_path_factory: pytest.TempPathFactory) -> BackgroundRemover:
    return make_tiny_remover(tmp_path_factory.mktemp("rembg-home"))


@pytest.fixture
def rembg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty rembg home for this test; no REMBG_HOME/XDG fallbacks can leak in."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    return tmp_path


def object_mask(rgba: np.ndarray) -> np.ndarray:
    """Pixels of the synthetic photo that are clearly not white."""
    distance: np.ndarray = np.abs(rgba[..., :3].astype(int) - 255).sum(axis=-1)
    return distance > 60


def test_tiny_model_mask_covers_the_object_and_not_the_background(remover: BackgroundRemover) -> None:
    rgba = decode_image(make_product_photo(320, 240, box=(90, 40, 230, 210)), max_pixels=LIMIT)
    alpha = remover.remove_background(rgba)[..., 3]
    on_object = object_mask(rgba)
    assert (alpha[on_object] > 200).mean() > 0.99
    assert (alpha[~on_object] > 128).mean() < 0.01
    assert alpha[:20, :20].max() == 0 and alpha[-20:, -20:].max() == 0
    # Lanczos resizing of the 320x320 mask rings faintly a few pixels past the edges.
    rows, cols = np.nonzero(alpha > 32)
    assert abs(rows.min() - 40) <= 3 and abs(rows.max() - 210) <= 3
    assert abs(cols.min() - 90) <= 3 and abs(cols.max() - 230) <= 3


def test_matted_photo_frames_with_the_object_centred(remover: BackgroundRemover) -> None:
    rgba = decode_image(make_product_photo(400, 300, image_format="PNG"), max_pixels=LIMIT)
    framed = frame_foreground(remover.remove_background(rgba))
    side = framed.shape[0]
    assert framed.shape == (side, side, 3)
    assert (framed[0, 0] == 127).all() and (framed[-1, -1] == 127).all()
    assert framed[side // 2, side // 2, 2] > 100  # the blue label sits in the middle


def test_image_with_real_transparency_skips_rembg(remover: BackgroundRemover) -> None:
    """A cut-out whose alpha marks a region rembg would never choose comes back untouched."""
    rgba = decode_image(make_product_photo(image_format="PNG"), max_pixels=LIMIT)
    rgba[..., 3] = 0
    rgba[:10, :10, 3] = 255  # a white corner: the tiny model would call this background
    result = remover.remove_background(rgba)
    assert result is rgba


def test_opaque_rgba_goes_through_rembg(remover: BackgroundRemover) -> None:
    rgba = decode_image(make_product_photo(image_format="PNG"), max_pixels=LIMIT)
    assert (rgba[..., 3] == 255).all()
    assert remover.remove_background(rgba)[:10, :10, 3].max() == 0


def test_blank_photo_has_no_foreground_after_framing(remover: BackgroundRemover) -> None:
    rgba = decode_image(make_product_photo(with_object=False), max_pixels=LIMIT)
    with pytest.raises(JobRejected) as caught:
        frame_foreground(remover.remove_background(rgba))
    assert caught.value.code == "no_foreground"


def test_model_name_resolves_from_the_rembg_home_offline(rembg_home: Path, remover: BackgroundRemover) -> None:
    """A u2net.onnx baked into U2NET_HOME/models/u2net/ is what production ships; no download happens."""
    write_tiny_matting_onnx(rembg_home / "models" / "u2net" / "u2net.onnx")
    by_name = BackgroundRemover("u2net")
    rgba = decode_image(make_product_photo(), max_pixels=LIMIT)
    assert np.array_equal(by_name.remove_background(rgba), remover.remove_background(rgba))


def test_missing_model_file_is_a_clear_startup_error(rembg_home: Path) -> None:
    with pytest.raises(MattingModelError, match="does not exist"):
        BackgroundRemover(str(rembg_home / "models" / "nope.onnx"))


def test_model_path_outside_the_rembg_home_names_the_fix(rembg_home: Path, tmp_path_factory:
                                                         pytest.TempPathFactory) -> None:
    outside = write_tiny_matting_onnx(tmp_path_factory.mktemp("elsewhere") / "tiny.onnx")
    with pytest.raises(MattingModelError, match="U2NET_HOME"):
        BackgroundRemover(str(outside))


def test_corrupt_onnx_file_is_a_startup_error(rembg_home: Path) -> None:
    broken = rembg_home / "models" / "broken" / "broken.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(MattingModelError, match="not a loadable ONNX model"):
        BackgroundRemover(str(broken))


def test_unknown_model_name_is_a_startup_error(rembg_home: Path) -> None:
    with pytest.raises(MattingModelError, match="unknown rembg model name"):
        BackgroundRemover("no-such-model")


def test_missing_u2net_offline_tells_where_to_put_it(rembg_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rembg would download u2net.onnx; a proxy on a closed local port makes that fail at once, as offline."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(MattingModelError, match="could not be downloaded") as caught:
        BackgroundRemover("u2net")
    assert str(rembg_home) in str(caught.value) and "U2NET_HOME" in str(caught.value)


def test_importing_the_module_does_not_import_rembg() -> None:
    code = "import sys, pipeline.intake.matting; print('rembg' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_tiny_model_has_the_u2net_interface(tmp_path: Path) -> None:
    import onnxruntime

    path = write_tiny_matting_onnx(tmp_path / "tiny.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == "input.1" and model_input.shape == [1, 3, 320, 320]
    white = ((1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).astype(np.float32)
    batch = np.broadcast_to(white.reshape(1, 3, 1, 1), (1, 3, 320, 320)).copy()
    batch[0, :, 100:200, 100:200] = -1.5  # a dark square
    (output,) = session.run(None, {"input.1": batch})
    assert output.shape == (1, 1, 320, 320)
    assert output[0, 0, 150, 150] > 0.99 and output[0, 0, 10, 10] < 0.01
