"""Tetrahedral grids and marching tetrahedra, checked with trimesh (an independent implementation
of watertightness, Euler characteristic and volume) against closed forms."""

import math

import pytest
import torch
import trimesh
from torch import Tensor

from prolificli.mesh.marching_tets import marching_tetrahedra
from prolificli.mesh.mesh import Mesh, laplacian_smoothness, normal_consistency
from prolificli.mesh.tets import TetGrid


# the whole box's tetrahedra and their volumes: helpers for checking TetGrid (the package uses
# TetGrid itself)
def tet_grid(resolution: int, bound: float = 1.0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Vertices [(R+1)^3, 3] spanning [-bound, bound]^3 and all its tetrahedra [6 R^3, 4]."""
    grid = TetGrid.cube(resolution, bound)
    return grid.vertices(device), grid.tets().to(device)


def signed_volumes(vertices: Tensor, tets: Tensor) -> Tensor:
    """Six times the signed volume of each tetrahedron (positive: (b-a, c-a, d-a) right-handed)."""
    a, b, c, d = (vertices[tets[:, i]] for i in range(4))
    return torch.linalg.det(torch.stack([b - a, c - a, d - a], dim=-1))


def as_trimesh(points, faces):
    return trimesh.Trimesh(points.detach().numpy(), faces.numpy(), process=False)


def test_tet_grid_fills_the_box_with_positive_tetrahedra():
    vertices, tets = tet_grid(5, 0.5)
    assert vertices.shape == (6 ** 3, 3) and tets.shape == (6 * 5 ** 3, 4)
    volumes = signed_volumes(vertices, tets) / 6
    assert (volumes > 0).all()
    assert volumes.sum().item() == pytest.approx(1.0, rel=1e-5)  # the unit box, no gaps or overlaps


def test_tet_grid_is_conforming():
    # every interior triangle is shared by exactly two tetrahedra, boundary ones by one
    vertices, tets = tet_grid(3, 1.0)
    faces = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]])
    _, counts = torch.unique(torch.sort(faces, dim=1).values, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    assert (counts == 1).sum().item() == 6 * 3 * 3 * 2  # 6 box faces, 3x3 squares, 2 triangles each


def test_sphere_level_set_is_watertight_with_the_right_radius_and_outward_normals():
    vertices, tets = tet_grid(32, 0.6)
    radius = 0.4
    points, faces = marching_tetrahedra(vertices, tets, vertices.norm(dim=-1) - radius)
    mesh = as_trimesh(points, faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2  # genus 0
    assert points.norm(dim=-1).max().item() <= radius + 1e-5  # chords lie inside the sphere
    assert points.norm(dim=-1).min().item() == pytest.approx(radius, abs=0.01)
    # positive volume means the faces wind counter-clockwise seen from outside
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.02)


def test_torus_level_set_has_genus_one():
    vertices, tets = tet_grid(40, 0.6)
    major, minor = 0.3, 0.12
    ring = torch.stack([vertices[:, :2].norm(dim=-1) - major, vertices[:, 2]], dim=-1)
    points, faces = marching_tetrahedra(vertices, tets, ring.norm(dim=-1) - minor)
    mesh = as_trimesh(points, faces)
    assert mesh.is_watertight and mesh.euler_number == 0  # V - E + F = 2 - 2g, g = 1
    assert mesh.volume == pytest.approx(2 * math.pi ** 2 * major * minor ** 2, rel=0.03)


def test_marching_tetrahedra_is_differentiable_in_sdf_and_positions():
    # a single tetrahedron with one corner inside: the cut points move with the sdf values as
    # p = a + s_a / (s_a - s_b) (b - a); compare with finite differences
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    tets = torch.tensor([[0, 1, 2, 3]])
    sdf = torch.tensor([-0.3, 0.5, 0.7, 0.2], dtype=torch.float64, requires_grad=True)
    points, faces = marching_tetrahedra(vertices, tets, sdf)
    assert faces.shape == (1, 3)
    weights = torch.rand_like(points)
    (points * weights).sum().backward()
    numeric = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[i] = 1e-6
        plus = (marching_tetrahedra(vertices, tets, sdf.detach() + step)[0] * weights).sum()
        minus = (marching_tetrahedra(vertices, tets, sdf.detach() - step)[0] * weights).sum()
        numeric[i] = (plus - minus) / 2e-6
    assert torch.allclose(sdf.grad, numeric, atol=1e-8)
    # the cut on edge (0,1) sits at 0.3 / 0.8 of the way
    assert any(torch.allclose(p, torch.tensor([0.375, 0, 0], dtype=torch.float64)) for p in points)


def test_empty_level_set():
    vertices, tets = tet_grid(4, 1.0)
    points, faces = marching_tetrahedra(vertices, tets, torch.ones(len(vertices)))
    assert points.shape == (0, 3) and faces.shape == (0, 3)


def test_regularisers_vanish_on_flat_meshes_and_grow_with_noise():
    grid = trimesh.creation.box((1, 1, 1)).subdivide().subdivide()  # flat faces, bent only at edges
    box = Mesh(torch.tensor(grid.vertices), torch.tensor(grid.faces))
    bent_edges = 12 * 4  # each cube edge is split into 4 segments, each bends by 90 degrees
    shared_edges = len(box.edges())
    assert normal_consistency(box).item() == pytest.approx(bent_edges / shared_edges)
    sphere = trimesh.creation.icosphere(3, 0.5)
    smooth = Mesh(torch.tensor(sphere.vertices), torch.tensor(sphere.faces))
    noisy = Mesh(smooth.vertices + 0.01 * torch.randn_like(smooth.vertices), smooth.faces)
    assert normal_consistency(noisy) > 2 * normal_consistency(smooth)
    assert laplacian_smoothness(noisy) > 2 * laplacian_smoothness(smooth)
    # closed forms: the normal consistency of a regular tetrahedron is 1 - cos(pi - dihedral) = 4/3
    tet = Mesh(torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64),
               torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]))
    assert normal_consistency(tet).item() == pytest.approx(4 / 3)
    # and the Laplacian offset of each corner is |v - mean(others)| = |4/3 v|, squared = 16/9 * 3
    assert laplacian_smoothness(tet).item() == pytest.approx(16 / 3)


def test_surface_tets_give_the_same_mesh_as_all_tets_on_a_box_grid():
    from prolificli.mesh.tets import TetGrid

    grid = TetGrid((14, 9, 11), (-0.5, -0.3, -0.4), 0.07)
    vertices = grid.vertices()
    sdf = (vertices - torch.tensor([0.0, 0.02, 0.0])).norm(dim=-1) - 0.25
    all_points, all_faces = marching_tetrahedra(vertices, grid.tets(), sdf)
    tets = grid.surface_tets(sdf < 0)
    assert len(tets) < 0.5 * len(grid.tets())
    points, faces = marching_tetrahedra(vertices, tets, sdf)
    assert torch.equal(points, all_points) and torch.equal(faces, all_faces)
    assert (signed_volumes(vertices, grid.tets()) > 0).all()


def test_dmtet_round_trips_through_its_tensors_and_deforms_within_half_a_cell():
    from prolificli.mesh.dmtet import DMTet
    from prolificli.mesh.tets import TetGrid

    grid = TetGrid.cube(12, 0.6)
    sdf = grid.vertices().norm(dim=-1) - 0.3
    dmtet = DMTet(grid, sdf, deformation=torch.randn(grid.n_vertices, 3) * 10)
    shift = (dmtet.vertices() - grid.vertices()).abs().max().item()
    assert shift <= 0.5 * grid.cell + 1e-6 and shift > 0.4 * grid.cell
    again = DMTet.from_tensors(dmtet.tensors())
    assert torch.equal(again.mesh().vertices, dmtet.mesh().vertices)
    # gradients reach both parameter sets through the extracted mesh
    dmtet.mesh().vertices.sum().backward()
    assert dmtet.sdf.grad.abs().sum() > 0 and dmtet.deformation.grad.abs().sum() > 0


@pytest.mark.parametrize("resolution", [128, 256])
def test_dmtet_at_the_papers_resolutions_extracts_a_fine_watertight_sphere(resolution):
    # only the cells the surface crosses are ever split into tetrahedra: 256^3 (100M tets) fits
    from prolificli.mesh.dmtet import DMTet
    from prolificli.mesh.tets import TetGrid

    grid = TetGrid.cube(resolution, 0.5)
    radius = 0.37
    mesh = DMTet(grid, grid.vertices().norm(dim=-1) - radius).mesh()
    tri = as_trimesh(mesh.vertices, mesh.faces)
    assert tri.is_watertight and tri.euler_number == 2
    distance = mesh.vertices.norm(dim=-1)
    assert (distance - radius).abs().max().item() < 0.05 * grid.cell  # linear interpolation: O(cell^2 / radius)
    assert tri.volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=5 / resolution ** 2 + 1e-4)
    assert len(mesh.faces) > resolution ** 2  # the level set is resolved at that scale


def test_an_extract_checkpoint_from_before_the_key_scheme_reads_like_a_new_one():
    """0.1.0 saved extract's DMTet without the "dmtet." prefix that geometry used; both read the same."""
    from prolificli.rundir.checkpoint import CheckpointKeys
    from prolificli.mesh.dmtet import DMTet
    from prolificli.mesh.tets import TetGrid
    from prolificli.rundir.outputs import dmtet_tensors

    grid = TetGrid.cube(8, 0.6)
    dmtet = DMTet(grid, grid.vertices().norm(dim=-1) - 0.3)
    old = dmtet.tensors()
    new = {CheckpointKeys.DMTET + name: value for name, value in old.items()}
    extra = {"rng.generator": torch.zeros(3, dtype=torch.uint8)}
    for stored in (old, new):
        again = DMTet.from_tensors(dmtet_tensors({**stored, **extra}))
        assert torch.equal(again.mesh().vertices, dmtet.mesh().vertices)
