"""Quality presets: what `fast` / `balanced` / `quality` mean in resolution, faces, textures and bytes.

The marching-cubes resolutions come from the earlier worker (128/256/384). Budgets follow the
storefront guidance: Apple AR Quick Look about 100k polygons and textures up to 2048²; Shopify under
15 MB per model. `fast` and `balanced` ship vertex colours in the GLB; `quality` bakes a texture from
the TripoSR colour field. AR Quick Look ignores vertex colours, so every USDZ carries a baked texture
(`usdz_texture_size`). When a file is over its byte budget the exporter halves the texture (down to
`min_texture_size`), then decimates further, and records each step in the QA report.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHUNK_SIZE = 65536  # points per decoder call: bounds query memory; results do not depend on it


@dataclass(frozen=True)
class Preset:
    """One quality level; every limit is enforced at export and checked in the QA report."""

    name: str
    mc_resolution: int      # marching-cubes grid points per axis
    max_faces: int          # decimation target for the exported mesh
    texture_size: int       # baked GLB texture side in pixels; 0 = vertex colours only
    max_glb_bytes: int      # hard budget for the GLB file
    usdz_texture_size: int  # texture side of the USDZ (AR Quick Look shows no vertex colours)
    max_usdz_bytes: int     # hard budget for the USDZ file
    min_texture_size: int = 512   # textures are never shrunk below this to meet a byte budget
    poster_size: int = 512        # poster PNG side in pixels


PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", mc_resolution=128, max_faces=20_000, texture_size=0, max_glb_bytes=2_000_000,
                   usdz_texture_size=1024, max_usdz_bytes=4_000_000),
    "balanced": Preset("balanced", mc_resolution=256, max_faces=50_000, texture_size=0,
                       max_glb_bytes=5_000_000, usdz_texture_size=1024, max_usdz_bytes=8_000_000),
    "quality": Preset("quality", mc_resolution=384, max_faces=100_000, texture_size=2048,
                      max_glb_bytes=15_000_000, usdz_texture_size=2048, max_usdz_bytes=15_000_000),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; a KeyError names the valid choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown quality {name!r}; choose one of {sorted(PRESETS)}") from None
