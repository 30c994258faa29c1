"""A textured triangle mesh as one binary glTF 2.0 file (GLB), written by hand from the spec.

trimesh's writer left out what strict readers check (bufferView targets) and wrote no normals,
so viewers shaded our meshes flat. This writer is short enough to read against the spec
(https://registry.khronos.org/glTF/specs/2.0/glTF-2.0.html) and the Khronos validator checks
its output in the tests. Layout of the file:

    12-byte header | JSON chunk (padded with spaces) | BIN chunk (padded with zeros)

The BIN chunk holds, each 4-byte aligned: positions, normals, texture coordinates (float32),
triangle indices (uint32) and the PNG. Coordinates are written as given: the caller rotates to
glTF's +y up.
"""

from __future__ import annotations

import json
import struct

import numpy as np

# numbers the spec fixes
_MAGIC, _VERSION = 0x46546C67, 2  # b"glTF"
_CHUNK_JSON, _CHUNK_BIN = 0x4E4F534A, 0x004E4942  # b"JSON", b"BIN\0"
_FLOAT, _UNSIGNED_INT = 5126, 5125  # accessor componentType
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963  # bufferView target
_TRIANGLES = 4
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def glb_bytes(positions: np.ndarray, normals: np.ndarray, texcoords: np.ndarray, triangles: np.ndarray,
              png: bytes, *, generator: str, name: str = "model") -> bytes:
    """positions, normals [N,3] (normals unit length); texcoords [N,2] in glTF's convention (origin
    at the image's top-left corner, v down); triangles [F,3] counter-clockwise seen from outside;
    png: the base colour texture, sRGB. Returns the file's bytes."""
    positions = np.ascontiguousarray(positions, dtype=np.float32)
    normals = np.ascontiguousarray(normals, dtype=np.float32)
    texcoords = np.ascontiguousarray(texcoords, dtype=np.float32)
    triangles = np.ascontiguousarray(triangles, dtype=np.uint32)
    n = len(positions)
    if positions.shape != (n, 3) or normals.shape != (n, 3) or texcoords.shape != (n, 2):
        raise ValueError(f"positions, normals, texcoords must be [N,3], [N,3], [N,2]; got {positions.shape}, "
                         f"{normals.shape}, {texcoords.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or (triangles.size and triangles.max() >= n):
        raise ValueError(f"triangles must be [F,3] indices below {n}")

    binary, views = b"", []

    def add_view(data: bytes, target: int | None) -> int:
        nonlocal binary
        view = {"buffer": 0, "byteOffset": len(binary), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        binary += _pad(data, b"\0")
        return len(views) - 1

    accessors = [
        # POSITION must carry its bounds (spec 3.7.2.1)
        {"bufferView": add_view(positions.tobytes(), _ARRAY_BUFFER), "componentType": _FLOAT, "count": n,
         "type": "VEC3", "min": positions.min(0).tolist(), "max": positions.max(0).tolist()},
        {"bufferView": add_view(normals.tobytes(), _ARRAY_BUFFER), "componentType": _FLOAT, "count": n,
         "type": "VEC3"},
        {"bufferView": add_view(texcoords.tobytes(), _ARRAY_BUFFER), "componentType": _FLOAT, "count": n,
         "type": "VEC2"},
        {"bufferView": add_view(triangles.tobytes(), _ELEMENT_ARRAY_BUFFER), "componentType": _UNSIGNED_INT,
         "count": int(triangles.size), "type": "SCALAR"},
    ]
    image_view = add_view(png, None)
    document = {
        "asset": {"version": "2.0", "generator": generator},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{
            "attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2}, "indices": 3, "material": 0,
            "mode": _TRIANGLES}]}],
        "materials": [{"name": f"{name}-material", "pbrMetallicRoughness": {
            "baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "textures": [{"source": 0, "sampler": 0}],
        # clamp: an atlas's charts must not wrap around to the opposite edge
        "samplers": [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR, "wrapS": _CLAMP_TO_EDGE,
                      "wrapT": _CLAMP_TO_EDGE}],
        "images": [{"bufferView": image_view, "mimeType": "image/png"}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
    }
    text = _pad(json.dumps(document, separators=(",", ":")).encode(), b" ")
    chunks = (struct.pack("<II", len(text), _CHUNK_JSON) + text
              + struct.pack("<II", len(binary), _CHUNK_BIN) + binary)
    return struct.pack("<III", _MAGIC, _VERSION, 12 + len(chunks)) + chunks
