"""The pure-PyTorch rasterizer against an independent brute-force ray caster, and its gradients
(interior through barycentrics, silhouettes through antialiasing) against finite differences."""

import numpy as np
import pytest
import torch
import trimesh

from prolificli.cameras import orbit_cameras
from prolificli.render.raster import antialias, face_neighbors, interpolate, rasterize, to_camera


def double_cameras(n=2, elevation=20.0, distance=1.3, fovy=50.0):
    cams = orbit_cameras(n, elevation, distance, fovy, azimuth_start_deg=10.0)
    cams.c2w, cams.fovy = cams.c2w.double(), cams.fovy.double()
    return cams


def brute_force_cast(origins, directions, triangles):
    """Nearest hit of every ray against every triangle: plane intersection, then an inside test
    by the signs of the sub-triangle normals (no screen space, no z-buffer)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    n = np.cross(b - a, c - a)
    denom = directions @ n.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((a * n).sum(-1)[None] - origins @ n.T) / denom
    p = origins[:, None] + t[..., None] * directions[:, None]

    def side(u, v):
        return (np.cross(v - u, p - u[None]) * n[None]).sum(-1)

    inside = (side(a, b) >= 0) & (side(b, c) >= 0) & (side(c, a) >= 0) & (t > 0)
    t = np.where(inside, t, np.inf)
    face = t.argmin(1)
    hit = np.isfinite(t.min(1))
    face[~hit] = -1
    return face, origins + np.where(hit, t.min(1), 0)[:, None] * directions


def test_visibility_and_positions_match_a_brute_force_ray_caster():
    sphere = trimesh.creation.icosphere(2, 0.4)
    sphere.apply_translation([0.05, -0.02, 0.1])
    box = trimesh.creation.box((0.3, 0.3, 0.3))
    box.apply_translation([0.0, 0.35, -0.1])  # overlaps the sphere: occlusion between two objects
    both = trimesh.util.concatenate([sphere, box])
    vertices, faces = torch.tensor(both.vertices), torch.tensor(both.faces)
    cameras = double_cameras()
    rast = rasterize(vertices, faces, cameras, 40, 36)
    positions = interpolate(vertices, faces, rast)
    origins, directions = cameras.rays(40, 36)
    for k in range(len(cameras)):
        face, location = brute_force_cast(origins[k].reshape(-1, 3).numpy(), directions[k].reshape(-1, 3).numpy(),
                                          both.triangles)
        ours = rast.face_id[k].reshape(-1).numpy()
        assert (face >= 0).sum() > 300
        assert (face != ours).sum() <= 2  # rays grazing an edge may pick either neighbour
        same = (face == ours) & (face >= 0)
        assert np.abs(positions[k].reshape(-1, 3).numpy()[same] - location[same]).max() < 1e-5
        # depth along the view axis equals the camera-frame -z of the hit point
        camera_points = to_camera(torch.tensor(location[same]), cameras[k])[0]
        assert np.allclose(rast.depth[k].reshape(-1).numpy()[same], -camera_points[:, 2].numpy(), atol=1e-5)


def test_barycentrics_sum_to_one_and_background_is_empty():
    sphere = trimesh.creation.icosphere(1, 0.3)
    rast = rasterize(torch.tensor(sphere.vertices), torch.tensor(sphere.faces), double_cameras(1), 24, 24)
    assert torch.allclose(rast.bary[rast.mask].sum(-1), torch.ones(int(rast.mask.sum()), dtype=torch.float64))
    assert (rast.bary[~rast.mask] == 0).all() and (rast.depth[~rast.mask] == 0).all()
    assert rast.mask[:, 0, 0].logical_not().all()  # the corner sees past the small sphere


def tetrahedron():
    vertices = torch.tensor([[0.3, 0, 0], [-0.2, 0.3, -0.1], [-0.2, -0.3, -0.1], [0.0, 0.05, 0.35]],
                            dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    return vertices, faces


def finite_difference(loss, x, step=1e-6):
    grad = torch.zeros_like(x)
    for index in np.ndindex(*x.shape):
        plus, minus = x.clone(), x.clone()
        plus[index] += step
        minus[index] -= step
        grad[index] = (loss(plus) - loss(minus)) / (2 * step)
    return grad


@pytest.mark.parametrize("with_antialias", [False, True])
def test_gradients_match_finite_differences(with_antialias):
    vertices, faces = tetrahedron()
    cameras = double_cameras(1, elevation=10, distance=1.5)
    colors = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float64)
    weights = torch.rand(1, 24, 24, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(v):
        rast = rasterize(v, faces, cameras, 24, 24)
        image = interpolate(colors, faces, rast)
        if with_antialias:
            image = antialias(image, rast, faces)
        return (image * weights).sum()

    x = vertices.clone().requires_grad_(True)
    loss(x).backward()
    numeric = finite_difference(loss, vertices)
    assert x.grad.abs().max() > 1.0
    assert torch.allclose(x.grad, numeric, rtol=1e-6, atol=1e-6)


def test_silhouette_gradient_exists_only_with_antialiasing():
    vertices, faces = tetrahedron()
    cameras = double_cameras(1, elevation=10, distance=1.5)

    def coverage(v, aa):
        rast = rasterize(v, faces, cameras, 24, 24)
        mask = rast.mask[..., None].double()
        return (antialias(mask, rast, faces) if aa else mask).sum()

    x = vertices.clone().requires_grad_(True)
    coverage(x, True).backward()
    assert x.grad.abs().max() > 1.0
    assert torch.allclose(x.grad, finite_difference(lambda v: coverage(v, True), vertices), atol=1e-6)
    # without antialiasing the binary mask is flat almost everywhere: no gradient at all
    assert not coverage(vertices.clone().requires_grad_(True), False).requires_grad


def test_antialiased_coverage_is_closer_to_the_true_pixel_coverage():
    # one open triangle; the true fraction of each pixel it covers is estimated by rasterizing at
    # 16x the resolution and averaging 16x16 blocks
    vertices = torch.tensor([[0.0, -0.31, -0.27], [0.0, 0.33, -0.21], [0.0, 0.02, 0.35]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    cameras = double_cameras(1, elevation=0, distance=1.5, fovy=40)
    rast = rasterize(vertices, faces, cameras, 32, 32)
    fine = rasterize(vertices, faces, cameras, 512, 512).mask.double()
    truth = fine.reshape(1, 32, 16, 32, 16).mean((2, 4))
    hard = rast.mask.double()
    soft = antialias(hard[..., None], rast, faces)[..., 0]
    edge = (truth > 0) & (truth < 1)
    assert edge.sum() > 40
    hard_error = (hard - truth)[edge].abs().mean().item()
    soft_error = (soft - truth)[edge].abs().mean().item()
    assert soft_error < 0.6 * hard_error
    assert soft.sum().item() == pytest.approx(truth.sum().item(), rel=0.01)


def test_face_neighbors_of_a_closed_mesh():
    _, faces = tetrahedron()
    neighbors = face_neighbors(faces)
    assert (neighbors >= 0).all()
    for f in range(4):
        for k in range(3):
            g = int(neighbors[f, k])
            shared = {int(faces[f, k]), int(faces[f, (k + 1) % 3])}
            assert shared <= set(faces[g].tolist()) and g != f


def _nvdiffrast_on_cuda() -> bool:
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def test_nvdiffrast_backend_refuses_clearly_where_it_cannot_run():
    from prolificli.config import ConfigError, MeshRenderConfig
    from prolificli.mesh.mesh import Mesh
    from prolificli.render.mesh import render_mesh

    sphere = trimesh.creation.icosphere(1, 0.4)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    with pytest.raises(ConfigError, match="nvdiffrast"):  # here: no package, or the mesh is on the CPU
        render_mesh(mesh, orbit_cameras(1, 20, 1.3, 50), 16, MeshRenderConfig(backend="nvdiffrast"))


@pytest.mark.skipif(not _nvdiffrast_on_cuda(), reason="nvdiffrast and a CUDA device are not available")
def test_nvdiffrast_backend_agrees_with_the_torch_rasterizer():
    from prolificli.config import MeshRenderConfig
    from prolificli.mesh.mesh import Mesh
    from prolificli.render.mesh import render_mesh

    sphere = trimesh.creation.icosphere(3, 0.4)
    sphere.apply_translation([0.05, -0.1, 0.02])  # off-centre: a flipped image axis would show
    device = torch.device("cuda")
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32, device=device),
                torch.tensor(sphere.faces, device=device))
    cameras = orbit_cameras(3, 20, 1.3, 50).to(device)
    ours = render_mesh(mesh, cameras, 64, MeshRenderConfig(backend="torch"))
    theirs = render_mesh(mesh, cameras, 64, MeshRenderConfig(backend="nvdiffrast"))
    assert (ours.mask != theirs.mask).float().mean() < 0.01  # pixels on a silhouette may differ
    both = ours.mask & theirs.mask
    assert (ours.position - theirs.position)[both].abs().max() < 1e-3
    assert (ours.depth - theirs.depth)[both].abs().max() < 1e-3
    assert (ours.opacity - theirs.opacity).abs().mean() < 0.01
    # silhouette gradients exist in both and point the same way
    grads = []
    for backend in ("torch", "nvdiffrast"):
        vertices = mesh.vertices.clone().requires_grad_(True)
        out = render_mesh(Mesh(vertices, mesh.faces), cameras, 64, MeshRenderConfig(backend=backend))
        out.opacity.sum().backward()
        grads.append(vertices.grad.flatten())
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.8
