"""One scene code's colour field, detached from the 1.7 GB model so a CPU-only replica can bake textures.

The field is the scene code (3 x 40 x 64 x 64 float32, about 2 MB) plus the 41k-parameter decoder; it
pickles through Ray's object store, and evaluating it on the CPU gives the same colours `TripoSR.query`
gives, without the ViT or the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from pipeline.model.config import DecoderConfig
from pipeline.model.decoder import NeRFMLP, query_points
from pipeline.model.tsr import TripoSR
from pipeline.presets import DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class ColorField:
    """Callable: native-frame points (N, 3) float -> colours (N, 3) float32 in [0, 1]."""

    scene_code: np.ndarray                       # (3, C, h, w) float32
    decoder_config: DecoderConfig
    decoder_state: dict[str, np.ndarray] = field(repr=False)
    radius: float
    density_bias: float

    @classmethod
    def from_model(cls, model: TripoSR, scene_code: Tensor) -> ColorField:
        state = {k: v.detach().float().cpu().numpy().copy() for k, v in model.decoder.state_dict().items()}
        return cls(scene_code=scene_code.detach().float().cpu().numpy().copy(),
                   decoder_config=model.config.decoder, decoder_state=state,
                   radius=model.renderer_radius, density_bias=model.density_bias)

    @cached_property
    def _decoder(self) -> NeRFMLP:
        decoder = NeRFMLP(self.decoder_config)
        decoder.load_state_dict({k: torch.from_numpy(v) for k, v in self.decoder_state.items()}, strict=True)
        return decoder.eval()

    @cached_property
    def _scene_code(self) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.scene_code, dtype=np.float32))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
            _, color = query_points(self._decoder, self._scene_code, tensor, self.radius, self.density_bias,
                                    DEFAULT_CHUNK_SIZE)
        return color.numpy()

    def __getstate__(self) -> dict[str, object]:
        # The cached torch objects are rebuilt on the other side; only arrays and config travel.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
