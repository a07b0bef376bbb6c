"""Mesh -> GLB bytes: `write_glb` picks the vertex-colour (`to_glb`) or baked-texture (`to_textured_glb`) form.

The GLB is written by hand (about a hundred lines) rather than through trimesh so that every field
is ours to choose and the Khronos validator reports no errors: one triangle primitive with
POSITION, NORMAL and COLOR_0, indices, and a rough non-metal material so viewers light it sensibly.
A baked `TexturedMesh` gets TEXCOORD_0 and an embedded PNG baseColorTexture instead of COLOR_0.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
from PIL import Image

from pipeline.assets.colors import srgb_to_linear
from pipeline.assets.geometry import compute_vertex_normals
from pipeline.assets.texture import TexturedMesh
from pipeline.errors import JobRejected
from pipeline.mesh_arrays import MeshArrays

GLB_MAGIC, GLB_VERSION = 0x46546C67, 2          # b"glTF", container version 2
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942  # b"JSON", b"BIN\0"
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, TRIANGLES = 34962, 34963, 4
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071  # sampler enums
MATERIAL_ROUGHNESS = 0.8  # matte product look; viewers' default of 1.0 reads as chalk, 0.5 as plastic


def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


class _BinaryBuffer:
    """Collects 4-byte-aligned buffer views and their accessors for one glTF buffer."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def add(self, array: np.ndarray, component_type: int, accessor_type: str, target: int,
            *, with_bounds: bool = False, normalized: bool = False) -> int:
        """Append `array` as a view + accessor; returns the accessor index."""
        data = np.ascontiguousarray(array).tobytes()
        self.views.append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data), "target": target})
        self.blob += _pad4(data, b"\0")
        accessor: dict[str, Any] = {"bufferView": len(self.views) - 1, "componentType": component_type,
                                    "count": int(len(array) if array.ndim > 1 else array.size),
                                    "type": accessor_type}
        if normalized:
            accessor["normalized"] = True
        if with_bounds:  # required on POSITION; must equal the stored float32 values exactly
            accessor["min"] = [float(x) for x in array.min(axis=0)]
            accessor["max"] = [float(x) for x in array.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def add_image(self, data: bytes) -> int:
        """Append encoded image bytes as a view without a target (images must not have one); its index."""
        self.views.append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)})
        self.blob += _pad4(data, b"\0")
        return len(self.views) - 1


def to_glb(mesh: MeshArrays) -> bytes:
    """A binary glTF 2.0 of `mesh` as given (callers orient and size it first: Y up, metres).

    COLOR_0 is float32 linear RGB: 8-bit linear would band in the darks, and float VEC3 is the
    form every loader accepts; no alpha, so no viewer switches to blending. Raises `export_failed`
    on an empty mesh.
    """
    if mesh.n_faces == 0 or mesh.n_vertices == 0:
        raise JobRejected("export_failed", "cannot write a GLB without triangles")
    positions = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    buffer = _BinaryBuffer()
    attributes = {
        "POSITION": buffer.add(positions, FLOAT, "VEC3", ARRAY_BUFFER, with_bounds=True),
        "NORMAL": buffer.add(compute_vertex_normals(positions, mesh.faces), FLOAT, "VEC3", ARRAY_BUFFER),
        "COLOR_0": buffer.add(srgb_to_linear(mesh.colors), FLOAT, "VEC3", ARRAY_BUFFER),
    }
    indices = _add_indices(buffer, mesh)
    material = {"name": "vertex_colour", "doubleSided": False, "pbrMetallicRoughness": {
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": MATERIAL_ROUGHNESS}}
    return _glb_container(_one_mesh_document(buffer, attributes, indices, material), buffer.blob)


def _add_indices(buffer: _BinaryBuffer, mesh: MeshArrays) -> int:
    """Triangle indices as an accessor: uint16 when every index fits (halves the bytes; 65535 is the
    primitive-restart value, which glTF forbids), else uint32."""
    index_dtype, index_type = ((np.uint16, UNSIGNED_SHORT) if mesh.n_vertices <= 65535
                               else (np.uint32, UNSIGNED_INT))
    return buffer.add(mesh.faces.astype(index_dtype).ravel(), index_type, "SCALAR", ELEMENT_ARRAY_BUFFER)


def _one_mesh_document(buffer: _BinaryBuffer, attributes: dict[str, int], indices: int,
                       material: dict[str, Any]) -> dict[str, Any]:
    """The glTF JSON of one node with one triangle primitive and one material; add textures after."""
    return {
        "asset": {"version": "2.0", "generator": "shop3d"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "product"}],
        "meshes": [{"name": "product", "primitives": [
            {"attributes": attributes, "indices": indices, "material": 0, "mode": TRIANGLES}]}],
        "materials": [material],
        "buffers": [{"byteLength": len(buffer.blob)}],
        "bufferViews": buffer.views,
        "accessors": buffer.accessors,
    }


def _glb_container(document: dict[str, Any], blob: bytes | bytearray) -> bytes:
    """The GLB header, JSON chunk (space-padded) and BIN chunk (zero-padded) around a finished document."""
    json_chunk = _pad4(json.dumps(document, separators=(",", ":")).encode("utf-8"), b" ")
    bin_chunk = bytes(blob)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join([struct.pack("<III", GLB_MAGIC, GLB_VERSION, total),
                     struct.pack("<II", len(json_chunk), CHUNK_JSON), json_chunk,
                     struct.pack("<II", len(bin_chunk), CHUNK_BIN), bin_chunk])


def to_textured_glb(model: TexturedMesh) -> bytes:
    """A binary glTF 2.0 of a baked `TexturedMesh` (Y up, metres): POSITION, NORMAL, TEXCOORD_0 and a
    PNG baseColorTexture; no COLOR_0, which viewers would multiply into the texture."""
    mesh = model.mesh
    if mesh.n_faces == 0 or mesh.n_vertices == 0:
        raise JobRejected("export_failed", "cannot write a GLB without triangles")
    buffer = _BinaryBuffer()
    attributes = {
        "POSITION": buffer.add(np.ascontiguousarray(mesh.vertices, dtype=np.float32), FLOAT, "VEC3",
                               ARRAY_BUFFER, with_bounds=True),
        "NORMAL": buffer.add(np.ascontiguousarray(model.normals, dtype=np.float32), FLOAT, "VEC3", ARRAY_BUFFER),
        "TEXCOORD_0": buffer.add(np.ascontiguousarray(model.uvs, dtype=np.float32), FLOAT, "VEC2", ARRAY_BUFFER),
    }
    indices = _add_indices(buffer, mesh)
    image_view = buffer.add_image(encode_png(model.texture))
    material = {"name": "baked_colour", "doubleSided": False, "pbrMetallicRoughness": {
        "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": MATERIAL_ROUGHNESS}}
    document = _one_mesh_document(buffer, attributes, indices, material)
    document["textures"] = [{"sampler": 0, "source": 0}]
    # Trilinear and clamped: the atlas' charts are padded for mip levels, its edges are not tiles.
    document["samplers"] = [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": CLAMP_TO_EDGE,
                             "wrapT": CLAMP_TO_EDGE}]
    document["images"] = [{"bufferView": image_view, "mimeType": "image/png"}]
    return _glb_container(document, buffer.blob)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3|4) uint8 image, zlib at its best level (textures are stored once)."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", optimize=True)
    return out.getvalue()


def write_glb(model: MeshArrays | TexturedMesh) -> bytes:
    """`to_textured_glb` for a baked mesh, `to_glb` (vertex colours) otherwise."""
    return to_textured_glb(model) if isinstance(model, TexturedMesh) else to_glb(model)
