"""The 3D Gaussian splatting PLY (scene/splat_ply.py), read by plyfile, an independent reader, and
checked against the format's conventions written out here: (rgb - 0.5) / C0 colours, logit
opacities, log scales, normalised quaternions w first."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prolificli.cameras import orbit_cameras
from prolificli.config import SplatRenderConfig
from prolificli.methods import build_recipe
from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.scene.gaussians import GaussianCloud
from prolificli.scene.splat_ply import SplatPlyError, read_splat_ply, write_splat_ply
from prolificli.stages import nerf

plyfile = pytest.importorskip("plyfile")

# the INRIA code's property order
INRIA_ORDER = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
               "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def random_cloud(n: int = 300, seed: int = 0) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    return GaussianCloud(torch.randn(n, 3, generator=g) * 0.3, torch.log(torch.rand(n, 3, generator=g) * 0.05 + 0.01),
                         torch.randn(n, 4, generator=g), torch.randn(n, generator=g) * 2,
                         torch.randn(n, 3, generator=g))


@pytest.mark.parametrize("smoothing", [0.0, 0.02])
def test_plyfile_reads_the_inria_layout_and_conventions(tmp_path, smoothing):
    cloud = random_cloud()
    write_splat_ply(tmp_path / "p.ply", cloud, smoothing)
    ply = plyfile.PlyData.read(str(tmp_path / "p.ply"))
    assert not ply.text and ply.byte_order == "<"
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"].data
    assert list(vertex.dtype.names) == INRIA_ORDER and all(vertex.dtype[k] == np.float32 for k in INRIA_ORDER)
    assert len(vertex) == cloud.count

    def column(*names):
        return torch.from_numpy(np.stack([vertex[k] for k in names], axis=-1).astype(np.float64))

    with torch.no_grad():
        c0 = 1 / (2 * math.sqrt(math.pi))
        variance = (2 * cloud.log_scales.double()).exp() + smoothing ** 2
        # opacity times the ratio of the Gaussian's volumes before and after smoothing (its mass kept)
        opacity = cloud.opacities().double() * torch.sqrt((2 * cloud.log_scales.double()).exp().prod(-1) /
                                                           variance.prod(-1))
        q = cloud.quaternions.double()
        assert torch.allclose(column("x", "y", "z"), cloud.means.double(), atol=1e-6)
        assert torch.equal(column("nx", "ny", "nz"), torch.zeros(cloud.count, 3, dtype=torch.float64))
        assert torch.allclose(0.5 + c0 * column("f_dc_0", "f_dc_1", "f_dc_2"), cloud.colors().double(), atol=1e-6)
        assert torch.allclose(torch.sigmoid(column("opacity")[:, 0]), opacity, atol=1e-6)
        assert torch.allclose(column("scale_0", "scale_1", "scale_2"), 0.5 * variance.log(), atol=1e-5)
        assert torch.allclose(column("rot_0", "rot_1", "rot_2", "rot_3"), q / q.norm(dim=-1, keepdim=True), atol=1e-6)


def test_a_read_back_file_renders_as_the_cloud_it_came_from(tmp_path):
    cloud = random_cloud()
    write_splat_ply(tmp_path / "p.ply", cloud, 0.02)
    back = read_splat_ply(tmp_path / "p.ply")
    cameras = orbit_cameras(3, 20.0, 1.5, 50.0)
    background = torch.ones(3, 3)
    with torch.no_grad():
        expected = cloud.render(None, cameras, 24, SplatRenderConfig(smoothing_3d=0.02), background_color=background)
        got = back.render(None, cameras, 24, SplatRenderConfig(), background_color=background)  # smoothing baked in
    assert torch.allclose(got.rgb, expected.rgb, atol=1e-4)
    assert torch.allclose(got.opacity, expected.opacity, atol=1e-4)


def test_our_reader_refuses_another_property_order(tmp_path):
    cloud = random_cloud(10)
    write_splat_ply(tmp_path / "p.ply", cloud)
    vertex = plyfile.PlyData.read(str(tmp_path / "p.ply"))["vertex"].data
    swapped = np.empty(len(vertex), dtype=[(k, "<f4") for k in INRIA_ORDER[:9] + INRIA_ORDER[10:13] +
                                          ["opacity"] + INRIA_ORDER[13:]])
    for name in INRIA_ORDER:
        swapped[name] = vertex[name]
    plyfile.PlyData([plyfile.PlyElement.describe(swapped, "vertex")]).write(str(tmp_path / "q.ply"))
    with pytest.raises(SplatPlyError, match="properties"):
        read_splat_ply(tmp_path / "q.ply")


@pytest.fixture(scope="module")
def toy_splat_ply(tmp_path_factory):
    """particle0.ply of a short toy-world splat run (4,000 Gaussians or more: several of the
    compressed format's 256-Gaussian chunks)."""
    run = tmp_path_factory.mktemp("toy") / "run"
    nerf.run(run, build_recipe(str(PACKAGE_RECIPES / "toy-gaussians.yaml"), ["nerf.steps=20"]), prompt="a red cube")
    return run / "nerf" / "splats" / "particle0.ply"


def read_csv(path) -> dict[str, np.ndarray]:
    """splat-transform's CSV: a header of column names, then one row per Gaussian."""
    names = path.read_text().splitlines()[0].split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return {name: table[:, i] for i, name in enumerate(names)}


def test_splat_transform_reads_and_compresses_a_toy_runs_ply(toy_splat_ply, splat_transform, tmp_path):
    """PlayCanvas's splat-transform (what SuperSplat uses) reads the file with no error, and its
    values survive a lossless read and its compressed format (.compressed.ply: 256-Gaussian chunks,
    positions and scales in 10-11 bits of the chunk's range, colours and opacity in 8)."""
    expected = plyfile.PlyData.read(str(toy_splat_ply))["vertex"].data
    info = splat_transform(toy_splat_ply, "null", "--info", "json")
    assert '"numGaussians": %d' % len(expected) in info and '"shBands": 0' in info

    splat_transform("-w", toy_splat_ply, tmp_path / "plain.csv")
    plain = read_csv(tmp_path / "plain.csv")
    for name in INRIA_ORDER[:3] + INRIA_ORDER[6:]:
        assert np.allclose(plain[name], expected[name], rtol=1e-6, atol=1e-6), name

    splat_transform("-w", toy_splat_ply, tmp_path / "small.compressed.ply")
    splat_transform("-w", tmp_path / "small.compressed.ply", tmp_path / "small.csv")
    small = read_csv(tmp_path / "small.csv")
    assert len(small["x"]) == len(expected)
    # the compressed file holds the Gaussians in another order (spatially sorted): pair each with
    # the nearest of the original's, and require that pairing to be one to one
    from scipy.spatial import cKDTree

    extent = max(float(np.ptp(expected[k])) for k in "xyz")
    distance, order = cKDTree(np.stack([expected[k] for k in "xyz"], -1)).query(np.stack([small[k] for k in "xyz"], -1))
    assert len(set(order.tolist())) == len(expected) and distance.max() <= extent / 2 ** 9
    expected = expected[order]
    c0 = 1 / (2 * np.sqrt(np.pi))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for k in ("scale_0", "scale_1", "scale_2"):
        assert np.abs(small[k] - expected[k]).max() <= np.ptp(expected[k]) / 2 ** 9 + 1e-4, k
    for k in ("f_dc_0", "f_dc_1", "f_dc_2"):  # as colours
        assert np.abs(c0 * (small[k] - expected[k])).max() <= 2 / 255, k
    assert np.abs(sigmoid(small["opacity"]) - sigmoid(expected["opacity"])).max() <= 2 / 255
