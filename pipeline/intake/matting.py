"""Background removal with rembg, as the official pipeline does it (SPEC §3 step 2).

`BackgroundRemover` is built once per replica (it owns an onnxruntime session) and injected.
rembg is imported on construction, not at module import: its first import JIT-compiles pymatting
with numba (~40 s on a cold cache), which must not happen to every importer of `pipeline`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.intake.images import has_real_transparency

log = logging.getLogger(__name__)

CUSTOM_SESSION = "u2net_custom"  # rembg's session for any u2net-interface .onnx file


class MattingModelError(RuntimeError):
    """The matting model cannot be loaded: a start-up failure of the replica, not of a job."""


class BackgroundRemover:
    """One rembg session from REMBG_MODEL: a rembg model name (`u2net`, `isnet-general-use`, ...) or
    the path of a u2net-interface `.onnx` file inside rembg's home (U2NET_HOME).

    Raises MattingModelError with the fix spelled out when the model is missing or unusable.
    """

    def __init__(self, model: str = "u2net", *, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        rembg = importlib.import_module("rembg")
        self.model = model
        self._remove = rembg.remove
        self._session = _new_session(rembg, model, list(providers))
        log.info("matting model %r loaded", model)

    def remove_background(self, rgba: np.ndarray, *, job_id: str = "-") -> np.ndarray:
        """(H, W, 4) uint8 -> (H, W, 4) uint8 with the matte as alpha.

        A photo that already has real transparency is returned unchanged, as upstream does. An empty
        matte is not an error here: `frame_foreground` reports it as `no_foreground`.
        """
        if has_real_transparency(rgba):
            log.debug("job %s: image already has transparency; matting skipped", job_id)
            return rgba
        photo = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), mode="RGB")
        # u2net sessions min-max normalise the network output; a constant output (a blank photo)
        # is 0/0, whose NaN mask casts to 0: nothing kept, which is the right answer.
        with np.errstate(invalid="ignore", divide="ignore"):
            cutout = self._remove(photo, session=self._session)
        return np.asarray(cutout.convert("RGBA"), dtype=np.uint8).copy()


def _new_session(rembg: Any, model: str, providers: list[str]) -> Any:
    """A rembg session for a model name or an .onnx path, with start-up errors made actionable."""
    home = _rembg_home()
    if model.endswith(".onnx") or "/" in model or "\\" in model:
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise MattingModelError(f"REMBG_MODEL file {path} does not exist")
        try:
            return rembg.new_session(CUSTOM_SESSION, model_path=str(path), providers=providers)
        except ValueError as exc:
            raise MattingModelError(
                f"rembg only loads custom models from inside its home {home}: move {path.name} under it "
                f"or set U2NET_HOME to a folder above {path.parent} ({exc})") from exc
        except Exception as exc:  # onnxruntime's load errors share no useful base class
            raise MattingModelError(f"REMBG_MODEL file {path} is not a loadable ONNX model "
                                    f"({type(exc).__name__})") from exc
    try:
        return rembg.new_session(model, providers=providers)
    except ValueError as exc:
        raise MattingModelError(f"unknown rembg model name {model!r} ({exc})") from exc
    except Exception as exc:  # pooch/requests download failures, onnxruntime load errors
        raise MattingModelError(
            f"rembg model {model!r} is not in {home}/models/{model}/ and could not be downloaded "
            f"({type(exc).__name__}); offline, put {model}.onnx there (U2NET_HOME sets the folder) "
            f"or set REMBG_MODEL to the path of an .onnx file under U2NET_HOME") from exc


def _rembg_home() -> str:
    # For messages only: where rembg looks for models (U2NET_HOME, REMBG_HOME, XDG_DATA_HOME, ~).
    base = importlib.import_module("rembg.sessions.base")
    return str(base.BaseSession.rembg_home())
