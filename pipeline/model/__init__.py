"""Our TripoSR: the network (one module per part), its config, and the one loading road.

    model = load_pretrained("stabilityai/TripoSR" or a directory, device="auto")
    scene_codes = model(images)                        # (B, H, W, 3) in [0, 1] -> (B, 3, C, h, w)
    density_act, color = model.query(scene_codes[0], points)   # (N, 3) -> (N,), (N, 3)
"""

from pipeline.model.checkpoint import CheckpointError, build_model, load_pretrained
from pipeline.model.config import ConfigError, TripoSRConfig, ViTConfig
from pipeline.model.device import resolve_device, set_num_threads
from pipeline.model.hub import ModelUnavailableError
from pipeline.model.tsr import TripoSR

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ModelUnavailableError",
    "TripoSR",
    "TripoSRConfig",
    "ViTConfig",
    "build_model",
    "load_pretrained",
    "resolve_device",
    "set_num_threads",
]
