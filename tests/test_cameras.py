from __future__ import annotations

import math

import pytest
import torch

from prolificli.cameras import (
    Cameras,
    look_at,
    make_cameras,
    orbit_cameras,
    sample_cameras,
    view_prompts,
    view_suffix,
)
from prolificli.config import CameraConfig


def one_camera(distance: float, elevation: float, azimuth: float, fovy_deg: float) -> Cameras:
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)
    return make_cameras(t(distance), t(fovy_deg), t(elevation), t(azimuth))


def test_look_at_is_a_rotation_looking_at_the_target():
    torch.manual_seed(0)
    positions = torch.randn(16, 3, dtype=torch.float64) * 2
    target = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    c2w = look_at(positions, target=target)
    rotation = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, eye)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(16, dtype=torch.float64))
    toward_target = (target - positions) / (target - positions).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(-c2w[:, :3, 2], toward_target)  # camera -z looks at the target
    torch.testing.assert_close(c2w[:, 2, 0], torch.zeros(16, dtype=torch.float64))  # image x stays horizontal: no roll
    assert torch.all(c2w[:, 2, 1] > 0)  # image up leans toward world up (z)
    torch.testing.assert_close(c2w[:, :3, 3], positions)
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(16, 4))


def test_look_at_straight_down_is_still_a_rotation():
    c2w = look_at(torch.tensor([[0.0, 0.0, 2.0]]))
    rotation = c2w[0, :3, :3]
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(3))
    torch.testing.assert_close(-rotation[:, 2], torch.tensor([0.0, 0.0, -1.0]))


def test_camera_position_follows_the_spherical_convention():
    cam = one_camera(2.0, 30.0, 60.0, 50.0)
    e, a = math.radians(30), math.radians(60)
    expected = torch.tensor([2 * math.cos(e) * math.cos(a), 2 * math.cos(e) * math.sin(a), 2 * math.sin(e)])
    torch.testing.assert_close(cam.c2w[0, :3, 3], expected.double())


def test_centre_ray_points_at_the_origin():
    cams = make_cameras(
        torch.tensor([1.2, 1.4]), torch.tensor([40.0, 70.0]), torch.tensor([-10.0, 40.0]), torch.tensor([-150.0, 20.0])
    )
    origins, directions = cams.rays(5, 7)  # odd sizes: a pixel centre lies on the optical axis
    assert origins.shape == directions.shape == (2, 5, 7, 3)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(2, 5, 7))
    centre_origin, centre_dir = origins[:, 2, 3], directions[:, 2, 3]
    to_origin = -centre_origin / centre_origin.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(centre_dir, to_origin)


def test_hand_computed_projection():
    # camera at (2,0,0) looking at -x: right = +y, up = +z. fovy 90 deg, 4x4 image -> focal 2 px.
    # P = (0, 0.5, 0.5): camera-frame x = 0.5, y = 0.5, depth 2 -> u = 2 + 2*0.5/2 = 2.5 (column 2),
    # v = 2 - 2*0.5/2 = 1.5 (row 1).
    cam = one_camera(2.0, 0.0, 0.0, 90.0)
    origins, directions = cam.rays(4, 4)
    expected = torch.tensor([-2.0, 0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(directions[0, 1, 2], expected / expected.norm())
    torch.testing.assert_close(origins[0, 1, 2], torch.tensor([2.0, 0, 0], dtype=torch.float64))


@pytest.mark.parametrize("height,width", [(6, 6), (4, 10), (9, 5)])
def test_points_on_rays_project_to_their_pixel_centres(height, width):
    generator = torch.Generator().manual_seed(1)
    cams = sample_cameras(CameraConfig(), 3, generator=generator)
    origins, directions = cams.rays(height, width)
    world_to_camera = torch.linalg.inv(cams.c2w)
    tan_half_fovy = torch.tan(cams.fovy / 2)
    for b in range(3):
        for row, col in [(0, 0), (height - 1, width - 1), (height // 2, 1)]:
            point = origins[b, row, col] + 1.7 * directions[b, row, col]
            x, y, z, _ = world_to_camera[b] @ torch.cat([point, torch.ones(1)])
            depth = -z
            assert depth > 0
            # normalised image coordinates: y in [-1, 1] over the height; x spans width/height of that
            ndc_x = x / depth / tan_half_fovy[b]
            ndc_y = y / depth / tan_half_fovy[b]
            u = (ndc_x * height / 2) + width / 2
            v = height / 2 - ndc_y * height / 2
            assert float(u) == pytest.approx(col + 0.5, abs=1e-4)
            assert float(v) == pytest.approx(row + 0.5, abs=1e-4)


def test_horizontal_fov_follows_the_aspect_ratio():
    cam = one_camera(1.0, 0.0, 0.0, 60.0)
    height, width = 200, 400
    _, directions = cam.rays(height, width)
    camera_dirs = directions[0] @ cam.c2w[0, :3, :3]  # world -> camera frame (rotation inverse = transpose)
    # the outer pixel edge of the middle row sits at tan(fovx/2) = (W/H) tan(fovy/2)
    edge_slope = camera_dirs[height // 2, -1, 0] / -camera_dirs[height // 2, -1, 2]
    half_pixel = math.tan(math.radians(30)) / (height / 2) * 0.5
    assert float(edge_slope) == pytest.approx(2 * math.tan(math.radians(30)) - half_pixel, rel=1e-6)


def test_sample_cameras_ranges_and_reproducibility():
    cfg = CameraConfig()
    a = sample_cameras(cfg, 256, generator=torch.Generator().manual_seed(7))
    b = sample_cameras(cfg, 256, generator=torch.Generator().manual_seed(7))
    c = sample_cameras(cfg, 256, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.c2w, b.c2w)
    assert not torch.allclose(a.c2w, c.c2w)
    assert len(a) == 256 and a.c2w.shape == (256, 4, 4) and a.embedding().shape == (256, 16)
    assert 1.0 <= a.distance.min() and a.distance.max() <= 1.5
    assert math.radians(40) <= a.fovy.min() and a.fovy.max() <= math.radians(70)
    assert -10 <= a.elevation_deg.min() and a.elevation_deg.max() <= 45
    assert -180 <= a.azimuth_deg.min() and a.azimuth_deg.max() <= 180
    assert a.azimuth_deg.max() - a.azimuth_deg.min() > 300  # really spread over the circle
    positions = a.c2w[:, :3, 3]
    torch.testing.assert_close(positions.norm(dim=-1), a.distance)
    torch.testing.assert_close(
        torch.rad2deg(torch.asin(positions[:, 2] / a.distance)), a.elevation_deg, atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        torch.rad2deg(torch.atan2(positions[:, 1], positions[:, 0])), a.azimuth_deg, atol=1e-3, rtol=0
    )


def test_indexing_keeps_the_batch_dimension():
    cams = sample_cameras(CameraConfig(), 4, generator=torch.Generator().manual_seed(0))
    assert len(cams[2]) == 1 and cams[2].c2w.shape == (1, 4, 4)
    assert len(cams[-1]) == 1
    torch.testing.assert_close(cams[-1].c2w[0], cams.c2w[3])
    assert len(cams[1:3]) == 2
    assert len(cams[torch.tensor([0, 3])]) == 2


def test_orbit_cameras():
    cams = orbit_cameras(8, elevation_deg=15.0, distance=1.25, fovy_deg=55.0, azimuth_start_deg=-180.0)
    assert len(cams) == 8
    torch.testing.assert_close(cams.azimuth_deg, torch.arange(-180.0, 180.0, 45.0))
    torch.testing.assert_close(cams.elevation_deg, torch.full((8,), 15.0))
    torch.testing.assert_close(cams.c2w[:, :3, 3].norm(dim=-1), torch.full((8,), 1.25))
    wrapped = orbit_cameras(4, 0.0, 1.0, 50.0, azimuth_start_deg=90.0)
    torch.testing.assert_close(wrapped.azimuth_deg, torch.tensor([90.0, -180.0, -90.0, 0.0]))


def test_view_suffix_thresholds():
    cfg = CameraConfig()  # front < 45, back > 135, overhead > 60
    cases = [
        (0.0, 0.0, "front view"),
        (0.0, 44.9, "front view"),
        (0.0, -44.9, "front view"),
        (0.0, 45.1, "side view"),
        (0.0, -90.0, "side view"),
        (0.0, 134.9, "side view"),
        (0.0, 135.1, "back view"),
        (0.0, -179.0, "back view"),
        (0.0, 180.0, "back view"),
        (59.9, 0.0, "front view"),
        (60.1, 0.0, "overhead view"),
        (60.1, 180.0, "overhead view"),
        (-10.0, 170.0, "back view"),
    ]
    elevation = torch.tensor([c[0] for c in cases])
    azimuth = torch.tensor([c[1] for c in cases])
    cams = make_cameras(torch.ones(len(cases)), torch.full((len(cases),), 50.0), elevation, azimuth)
    assert view_suffix(cams, cfg) == [c[2] for c in cases]
    assert view_prompts("a cat", cams[0], cfg) == ["a cat, front view"]
    cfg.view_dependent_prompt = False
    assert view_prompts("a cat", cams[:2], cfg) == ["a cat", "a cat"]


def test_cameras_to_device():
    cams = sample_cameras(CameraConfig(), 2).to("cpu")
    assert cams.c2w.device.type == "cpu" and cams.fovy.device.type == "cpu"
