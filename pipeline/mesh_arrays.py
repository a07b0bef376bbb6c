"""`MeshArrays`: the plain-array mesh handed from isosurface extraction to export (no trimesh, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeshArrays:
    """A coloured triangle mesh in the model's native frame (Z up, units of the [-0.87, 0.87]³ box).

    vertices float32 (V, 3); faces int32 (F, 3), counter-clockwise seen from outside; colors uint8 (V, 3).
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray

    def __post_init__(self) -> None:
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"vertices must be (V, 3), got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {self.faces.shape}")
        if self.colors.shape != self.vertices.shape:
            raise ValueError(f"colors must be (V, 3) like vertices, got {self.colors.shape}")

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])
