"""`TripoSR`: images -> triplane scene codes -> (density, colour) at any point. The data flow is `forward`.

On CUDA the ViT and the backbone run under bf16 (fp16 where bf16 is unsupported) autocast; the
post-processor, the scene codes and every point query stay float32, since the density is exponentiated
and thresholded at 25. On the CPU everything is float32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.config import TripoSRConfig
from pipeline.model.decoder import NeRFMLP, query_points
from pipeline.model.image_tokenizer import DINOImageTokenizer
from pipeline.model.transformer import Transformer1D
from pipeline.model.triplane import Triplane1DTokenizer, TriplaneUpsampleNetwork
from pipeline.presets import DEFAULT_CHUNK_SIZE


class TripoSR(nn.Module):
    """The TripoSR network with the official module names (its state_dict is the official layout)."""

    def __init__(self, config: TripoSRConfig, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        self.config = config
        self.chunk_size = chunk_size
        self.renderer_radius = float(config.renderer.radius)
        self.density_bias = float(config.renderer.density_bias)
        # None: float32 everywhere; a half dtype: autocast for the ViT and backbone (set by load_pretrained).
        self.autocast_dtype: torch.dtype | None = None
        self.stored_half: torch.dtype | None = None   # set by store_autocast_weights
        self.image_tokenizer = DINOImageTokenizer(config.vit)
        self.tokenizer = Triplane1DTokenizer(config.tokenizer)
        self.backbone = Transformer1D(config.backbone)
        self.post_processor = TriplaneUpsampleNetwork(config.post_processor)
        self.decoder = NeRFMLP(config.decoder)

    @property
    def device(self) -> torch.device:
        return self.tokenizer.embeddings.device

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.autocast_dtype is None:
            if self.stored_half is not None:
                raise RuntimeError(f"the ViT and backbone weights are stored in {self.stored_half}; "
                                   "they run only under autocast (load with precision='float32' for float32)")
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def store_autocast_weights(self) -> int:
        """Keep the ViT's and backbone's linear and convolution weights in the autocast dtype; returns how
        many tensors were converted.

        Autocast casts exactly these to its dtype on every forward, since inference weights are never
        cached as casts. Storing them cast once gives bit-identical results with half their memory and no
        per-forward casts. Norms, embeddings and everything after the backbone stay float32, because
        autocast runs them in float32 too.
        """
        if self.autocast_dtype is None:
            raise ValueError("set autocast_dtype first: stored half weights run only under autocast")
        converted = 0
        for part in (self.image_tokenizer, self.backbone):
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    for parameter in module.parameters(recurse=False):
                        parameter.data = parameter.data.to(self.autocast_dtype)
                        converted += 1
        self.stored_half = self.autocast_dtype
        return converted

    def resize_images(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) in [0, 1] -> (B, 3, S, S), S = cond_image_size; antialiased bilinear as upstream."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3) RGB, got {tuple(images.shape)}")
        if not images.is_floating_point():  # uint8 would silently be read as 0..255
            raise ValueError(f"images must be float in [0, 1], got {images.dtype}")
        pixels = images.to(device=self.device, dtype=torch.float32).permute(0, 3, 1, 2)
        size = self.config.cond_image_size
        if pixels.shape[-2:] == (size, size):
            return pixels  # the official resize of an S x S image is an exact identity
        return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def tokenize_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) -> image tokens (B, 1 + (S/p)^2, D_vit)."""
        with self._autocast():
            image_tokens: Tensor = self.image_tokenizer(pixels)
        return image_tokens

    def run_backbone(self, image_tokens: Tensor) -> Tensor:
        """(B, M, D_vit) image tokens -> triplane tokens (B, C, 3 * plane_size^2), float32."""
        with self._autocast():
            triplane_tokens: Tensor = self.backbone(self.tokenizer(image_tokens.shape[0]), image_tokens)
        return triplane_tokens.float()

    def decode_planes(self, backbone_out: Tensor) -> Tensor:
        """(B, C, 3 * plane_size^2) -> scene codes (B, 3, C_out, 2 * plane_size, 2 * plane_size), float32."""
        scene_codes: Tensor = self.post_processor(self.tokenizer.detokenize(backbone_out.float()))
        return scene_codes

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        """images (B, H, W, 3) float in [0, 1] -> scene_codes (B, 3, C, h, w), all B in one forward."""
        image_tokens = self.tokenize_image(self.resize_images(images))
        return self.decode_planes(self.run_backbone(image_tokens))

    @torch.inference_mode()
    def query(self, scene_code: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """scene_code (3, C, h, w), points (N, 3) -> (density_act (N,), color (N, 3)), float32 on self.device.

        density_act = exp(raw + density_bias); color = sigmoid(logits). Chunked by `self.chunk_size`.
        """
        if scene_code.ndim != 4 or scene_code.shape[0] != 3:
            raise ValueError(f"scene_code must be (3, C, h, w), got {tuple(scene_code.shape)}")
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {tuple(points.shape)}")
        device = self.device
        scene_code = scene_code.to(device=device, dtype=torch.float32)
        points = points.to(device=device, dtype=torch.float32)
        return query_points(self.decoder, scene_code, points, self.renderer_radius, self.density_bias,
                            self.chunk_size)
