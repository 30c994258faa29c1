"""The Gaussian-splat rasterizer (render/splat.py) against independent references: a brute-force
renderer written here (every Gaussian at every pixel, its own projection by autograd's Jacobian
and its own quaternion rotation), and central differences in float64 for every parameter group."""

from __future__ import annotations

import math

import pytest
import torch

from prolificli.cameras import make_cameras
from prolificli.config import SplatRenderConfig
from prolificli.render import splat
from prolificli.render.splat import render_gaussians


def random_scene(n: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    log_scales = torch.log(0.04 + 0.12 * torch.rand(n, 3, generator=g))
    quaternions = torch.randn(n, 4, generator=g)
    opacity_logits = torch.rand(n, generator=g) * 4 - 1
    colors = torch.rand(n, 3, generator=g)
    return [t.to(dtype) for t in (means, log_scales, quaternions, opacity_logits, colors)]


def two_cameras():
    return make_cameras(torch.tensor([2.2, 2.6]), torch.tensor([50.0, 40.0]), torch.tensor([20.0, -10.0]),
                        torch.tensor([30.0, 200.0])).to("cpu")


def small_config(**overrides) -> SplatRenderConfig:
    # small tiles, blocks and chunks so that one tiny image takes several tiles, rounds and chunks
    return SplatRenderConfig(**{"tile_size": 8, "block": 3, "chunk_elements": 8 * 8 * 3 * 2, **overrides})


# -- the brute-force reference --------------------------------------------------------------------

def hamilton(q, r):
    w1, x1, y1, z1 = q
    w2, x2, y2, z2 = r
    return (w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2)


def rotate(q, v):
    """v rotated by the unit quaternion q: q v q*."""
    w, x, y, z = q
    return hamilton(hamilton(q, (0.0, *v)), (w, -x, -y, -z))[1:]


def brute_force(means, log_scales, quaternions, opacity_logits, colors, background, cameras, height, width, cfg):
    """rgb, opacity, depth [B,H,W,*] by evaluating every Gaussian at every pixel centre."""
    rgbs, opacities, depths = [], [], []
    for b in range(len(cameras)):
        c2w = cameras.c2w[b].to(means.dtype)
        w2c = torch.linalg.inv(c2w)
        focal = 0.5 * height / math.tan(0.5 * float(cameras.fovy[b]))

        def to_pixels(x):
            p = w2c[:3, :3] @ x + w2c[:3, 3]
            return torch.stack([focal * p[0] / -p[2] + width / 2, height / 2 - focal * p[1] / -p[2]])

        js, is_ = torch.meshgrid(torch.arange(width, dtype=means.dtype) + 0.5,
                                 torch.arange(height, dtype=means.dtype) + 0.5, indexing="xy")
        pixel = torch.stack([js, is_], dim=-1).reshape(-1, 2)  # [P,2] (x, y)
        forward_axis = -c2w[:3, 2]
        alphas, zs = [], []
        for i in range(means.shape[0]):
            q = quaternions[i] / quaternions[i].norm()
            axes = torch.stack([torch.stack(rotate(q, e)) for e in torch.eye(3, dtype=means.dtype)], dim=1)  # R
            sigma = axes @ torch.diag(torch.exp(2 * log_scales[i])) @ axes.T
            jacobian = torch.autograd.functional.jacobian(to_pixels, means[i], create_graph=True)  # [2,3]
            cov = jacobian @ sigma @ jacobian.T + cfg.low_pass * torch.eye(2, dtype=means.dtype)
            delta = pixel - to_pixels(means[i])
            power = -0.5 * (delta @ torch.linalg.inv(cov) * delta).sum(-1)
            alpha = torch.clamp(torch.sigmoid(opacity_logits[i]) * torch.exp(power), max=cfg.max_alpha)
            alpha = torch.where((alpha >= cfg.min_alpha) & (power <= 0), alpha, torch.zeros_like(alpha))
            alphas.append(alpha)
            zs.append(torch.dot(means[i] - c2w[:3, 3], forward_axis))
        order = sorted(range(means.shape[0]), key=lambda i: float(zs[i]))
        transmittance = torch.ones(pixel.shape[0], dtype=means.dtype)
        rgb = torch.zeros(pixel.shape[0], 3, dtype=means.dtype)
        opacity = torch.zeros(pixel.shape[0], dtype=means.dtype)
        z = torch.zeros(pixel.shape[0], dtype=means.dtype)
        for i in order:
            alpha = torch.where(transmittance >= cfg.stop_transmittance, alphas[i], torch.zeros_like(alphas[i]))
            weight = transmittance * alpha
            rgb = rgb + weight[:, None] * colors[i]
            opacity = opacity + weight
            z = z + weight * zs[i]
            transmittance = transmittance * (1 - alpha)
        # z along the optical axis -> distance along the pixel's ray, by the ray's angle to that axis
        rays = torch.stack([(pixel[:, 0] - width / 2) / focal, (height / 2 - pixel[:, 1]) / focal,
                            -torch.ones(pixel.shape[0], dtype=means.dtype)], dim=-1)
        cos = -rays[:, 2] / rays.norm(dim=-1)
        rgbs.append((rgb + (1 - opacity)[:, None] * background[b]).reshape(height, width, 3))
        opacities.append(opacity.reshape(height, width, 1))
        depths.append((z / cos).reshape(height, width, 1))
    return torch.stack(rgbs), torch.stack(opacities), torch.stack(depths)


# -- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_transmittance", [1e-4, 0.3])
def test_matches_brute_force(stop_transmittance):
    scene = random_scene(24, seed=0)
    cameras = two_cameras()
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.1]], dtype=torch.float64)
    cfg = small_config(stop_transmittance=stop_transmittance)
    height, width = 27, 21  # not multiples of the tile: the edge tiles are cut
    ours = render_gaussians(*scene, None, cameras, height, width, cfg, background_color=background)
    reference = brute_force(*scene, background, cameras, height, width, cfg)
    assert ours.opacity.max() > 0.9 and ours.opacity.min() < 0.05  # the scene covers part of each image
    for name, mine, theirs in zip(("rgb", "opacity", "depth"), (ours.rgb, ours.opacity, ours.depth), reference):
        assert mine.shape == theirs.shape, name
        assert torch.allclose(mine, theirs, atol=1e-9), (name, (mine - theirs).abs().max())


def test_tile_size_and_blocks_do_not_change_the_image():
    scene = random_scene(40, seed=1, dtype=torch.float32)
    cameras = two_cameras()
    white = torch.ones(2, 3)
    base = render_gaussians(*scene, None, cameras, 40, 40, SplatRenderConfig(), background_color=white)
    other = render_gaussians(*scene, None, cameras, 40, 40, small_config(tile_size=5, block=7),
                             background_color=white)
    assert torch.allclose(base.rgb, other.rgb, atol=1e-5)
    assert torch.allclose(base.depth, other.depth, atol=1e-4)


@pytest.mark.parametrize("cache_elements", [1 << 23, 0], ids=["blocks kept", "blocks recomputed"])
def test_gradients_match_central_differences(cache_elements):
    scene = random_scene(10, seed=2)
    cameras = two_cameras()
    background = torch.tensor([[0.9, 0.8, 0.7], [0.1, 0.2, 0.3]], dtype=torch.float64)
    cfg = small_config(cache_elements=cache_elements)
    height, width = 17, 19
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(2, height, width, c, generator=g, dtype=torch.float64) for c in (3, 1, 1)]

    def loss(*params):
        out = render_gaussians(*params, None, cameras, height, width, cfg, background_color=background)
        return sum((w * x).sum() for w, x in zip(weights, (out.rgb, out.opacity, out.depth)))

    params = [p.clone().requires_grad_(True) for p in scene]
    analytic = torch.autograd.grad(loss(*params), params)
    names = ["means", "log_scales", "quaternions", "opacity_logits", "colors"]
    eps = 1e-6
    for k, name in enumerate(names):
        numeric = torch.zeros_like(scene[k])
        for index in range(scene[k].numel()):
            plus = [p.clone() for p in scene]
            minus = [p.clone() for p in scene]
            plus[k].view(-1)[index] += eps
            minus[k].view(-1)[index] -= eps
            with torch.no_grad():
                numeric.view(-1)[index] = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert analytic[k].abs().max() > 1e-3, name  # every group moves the image
        error = (analytic[k] - numeric).abs().max() / numeric.abs().max()
        assert error < 1e-6, (name, float(error))


def test_memory_is_bounded_by_the_chunk(monkeypatch):
    """No block puts more than chunk_elements pixel-Gaussian pairs in flight, forward or backward,
    however many Gaussians the scene has."""
    seen = []
    original = splat._block_forward

    def recording(pixels, means2d, *rest):
        seen.append(pixels.shape[0] * pixels.shape[1] * means2d.shape[1])
        return original(pixels, means2d, *rest)

    monkeypatch.setattr(splat, "_block_forward", recording)
    cfg = SplatRenderConfig(tile_size=8, block=8, chunk_elements=8 * 8 * 8 * 4, cache_elements=0)
    for n in (50, 400):
        seen.clear()
        params = [p.requires_grad_(True) for p in random_scene(n, seed=4, dtype=torch.float32)]
        out = render_gaussians(*params, None, two_cameras(), 48, 48, cfg, background_color=torch.ones(2, 3))
        out.rgb.sum().backward()
        assert max(seen) <= cfg.chunk_elements
        assert params[0].grad.abs().sum() > 0


def _gsplat_usable() -> bool:
    from prolificli.render.gsplat_backend import gsplat_available

    return gsplat_available()


@pytest.mark.skipif(not _gsplat_usable(), reason="gsplat with CUDA only (pip install gsplat, a GPU)")
def test_gsplat_backend_agrees_with_ours():
    from prolificli.render.gsplat_backend import render_gaussians_gsplat

    scene = [t.cuda() for t in random_scene(200, seed=5, dtype=torch.float32)]
    cameras = two_cameras().to("cuda")
    white = torch.ones(2, 3, device="cuda")
    ours = render_gaussians(*scene, None, cameras, 64, 48, SplatRenderConfig(), background_color=white)
    theirs = render_gaussians_gsplat(*scene, None, cameras, 64, 48, SplatRenderConfig(), background_color=white)
    for name in ("rgb", "opacity", "depth"):
        difference = (getattr(ours, name) - getattr(theirs, name)).abs()
        assert difference.mean() < 2e-3 and difference.max() < 5e-2, (name, float(difference.max()))
