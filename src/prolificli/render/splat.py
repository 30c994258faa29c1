"""Differentiable rendering of 3D Gaussians (3D Gaussian splatting) in pure PyTorch, tile by tile.

A Gaussian has a mean mu, a covariance Sigma = R S S^T R^T (R from a unit quaternion, S = diag of
the scales), an opacity o and a feature vector f (its colour, and what else is composited). A
camera sees it through three steps, each a pure function here:

1. `project_gaussians` (EWA splatting): the view-space mean p = W mu + t and depth z = -p_z (the
   camera looks along -z, cameras.py), the pixel position of the mean, and the 2D covariance
   Sigma' = J W Sigma W^T J^T + low_pass * I, where J is the Jacobian of the perspective
   projection at p. The low-pass term (0.3 px^2, as 3DGS) keeps a Gaussian at least about a pixel
   wide, so no splat falls between pixel centres.
2. `tile_intersections`: the image is cut into tiles of tile_size^2 pixels. A Gaussian touches
   the pixels where alpha = o exp(-d^2 / 2) >= min_alpha, d the Mahalanobis distance under
   Sigma': the ellipse d^2 <= 2 ln(o / min_alpha), whose bounding box gives the tiles it is listed
   in. Each tile's list is sorted front to back by z.
3. `composite`: per pixel, front-to-back alpha compositing along its tile's list,
       alpha_j = min(max_alpha, o_j exp(-d_j^2 / 2)),  set to 0 below min_alpha,
       T_j = prod_{k<j} (1 - alpha_k),   F = sum_j T_j alpha_j f_j,
   with early termination: a Gaussian counts only while the transmittance in front of it is at
   least stop_transmittance. Composited features are (rgb, 1, z): colour, opacity and depth.

Memory: `composite` is a custom autograd Function. Its forward pass runs without a graph, block by
block (the next k >= `block` Gaussians of every tile at a time, tiles in chunks of at most
`chunk_elements` pixel-Gaussian pairs). Its backward pass takes the same blocks in the same order
(kept from the forward pass when they fit in `cache_elements`, else recomputed) and
differentiates one block at a time: a block changes the image through its own contribution F_B
and through the transmittance it leaves to everything behind it, T_out = T_in prod (1 - alpha_j),
so with S the features composited behind the block (from the saved final image), the block's
gradient is that of
    g . F_B + (g . S) * sum_j log(1 - alpha_j)       (T_in and S held constant),
g the image gradient (`_block_backward` has the derivatives). Beyond cache_elements, peak memory
is one chunk's pairs, whatever the number of Gaussians.
The projection's graph is O(number of Gaussians) and left to autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras, pixel_directions
from ..config import SplatRenderConfig


@dataclass
class SplatOutput:
    rgb: Tensor  # [B,H,W,3] composited over the background
    opacity: Tensor  # [B,H,W,1]
    depth: Tensor  # [B,H,W,1] expected distance along the pixel's ray (0 where nothing is hit)
    pairs: int = 0  # (tile, Gaussian) intersections: the renderer's work
    means2d: Tensor | None = None  # [B,N,2] pixel positions of the means, for densification's statistics
    drawn: Tensor | None = None  # [B,N] bool: listed in some tile (what the gradient statistics count)


def quaternion_to_rotation(quaternions: Tensor) -> Tensor:
    """Rotation matrices [N,3,3] of quaternions [N,4] (w, x, y, z; normalised here)."""
    w, x, y, z = (quaternions / quaternions.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def covariances_3d(log_scales: Tensor, quaternions: Tensor) -> Tensor:
    """Sigma = R S S^T R^T [N,3,3] from log-scales [N,3] and quaternions [N,4]."""
    rs = quaternion_to_rotation(quaternions) * log_scales.exp()[:, None, :]  # R S
    return rs @ rs.transpose(1, 2)


@dataclass
class Projected:
    """N Gaussians seen by B cameras. means2d [B,N,2] in pixels (x right, y down; pixel (i, j) has
    its centre at (j + 0.5, i + 0.5)); conics [B,N,3] the inverse 2D covariance (a, b, c), so
    d^2 = a dx^2 + 2 b dx dy + c dy^2; depths [B,N] the view-space z (> 0 in front); covariances2d
    [B,N,3] (xx, xy, yy); visible [B,N] in front of the near plane with an invertible Sigma'."""

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    covariances2d: Tensor
    visible: Tensor


def project_gaussians(means: Tensor, covariances: Tensor, cameras: Cameras, height: int, width: int,
                      cfg: SplatRenderConfig) -> Projected:
    """EWA projection of means [N,3] and covariances [N,3,3] into every camera (see the module doc)."""
    w2c = torch.linalg.inv(cameras.c2w.to(means.dtype))  # [B,4,4]
    rotation, translation = w2c[:, :3, :3], w2c[:, :3, 3]
    p = torch.einsum("bij,nj->bni", rotation, means) + translation[:, None, :]  # [B,N,3] view space
    z = -p[..., 2]
    visible = z > cfg.near
    z_safe = torch.where(visible, z, torch.ones_like(z))
    focal = cameras.focal(height).to(means.dtype)[:, None]  # [B,1]
    x_pix = focal * p[..., 0] / z_safe + 0.5 * width
    y_pix = 0.5 * height - focal * p[..., 1] / z_safe
    # The Jacobian of (x_pix, y_pix) with respect to p. As 3DGS, the tangent (x/z, y/z) is clamped to
    # 1.3x the half field of view: far outside the image the linearisation is meaningless and blows up.
    limit_x = 1.3 * 0.5 * width / focal
    limit_y = 1.3 * 0.5 * height / focal
    tx = (p[..., 0] / z_safe).clamp(-limit_x, limit_x)
    ty = (p[..., 1] / z_safe).clamp(-limit_y, limit_y)
    f_z = focal / z_safe
    zero = torch.zeros_like(z)
    jacobian = torch.stack([f_z, zero, f_z * tx, zero, -f_z, -f_z * ty], dim=-1).reshape(*z.shape, 2, 3)
    jw = jacobian @ rotation[:, None]  # [B,N,2,3]
    cov2d = jw @ covariances[None] @ jw.transpose(-1, -2)  # [B,N,2,2]
    xx = cov2d[..., 0, 0] + cfg.low_pass
    xy = cov2d[..., 0, 1]
    yy = cov2d[..., 1, 1] + cfg.low_pass
    det = xx * yy - xy * xy
    visible = visible & (det > 0)
    det_safe = torch.where(visible, det, torch.ones_like(det))
    conics = torch.stack([yy / det_safe, -xy / det_safe, xx / det_safe], dim=-1)
    return Projected(torch.stack([x_pix, y_pix], dim=-1), conics, z, torch.stack([xx, xy, yy], dim=-1), visible)


@dataclass
class TileLists:
    """Every (tile, Gaussian) pair, sorted by tile and then front to back. Tiles are numbered
    camera by camera, row-major within an image; Gaussians by camera * N + index, as in the
    flattened [B*N] attributes. gaussian [P] long; offsets [n_tiles + 1]: tile t owns pairs
    offsets[t] to offsets[t + 1]."""

    gaussian: Tensor
    offsets: Tensor
    tiles_x: int
    tiles_y: int
    drawn: Tensor  # [B,N] bool: the Gaussians listed in at least one tile


@torch.no_grad()
def tile_intersections(projected: Projected, opacities: Tensor, height: int, width: int,
                       cfg: SplatRenderConfig) -> TileLists:
    """The tiles each Gaussian touches (where its alpha can reach min_alpha), sorted by depth."""
    batch, n = projected.depths.shape
    size = cfg.tile_size
    tiles_x, tiles_y = math.ceil(width / size), math.ceil(height / size)
    opacity = opacities.detach().clamp(max=cfg.max_alpha).expand(batch, n)
    # alpha >= min_alpha inside the ellipse d^2 <= 2 ln(o / min_alpha); its bounding box is
    # +-d sqrt(Sigma'_xx), +-d sqrt(Sigma'_yy)
    reach = 2 * torch.log(opacity / cfg.min_alpha)
    touching = projected.visible & (reach > 0)
    d = reach.clamp(min=0).sqrt()
    cov = projected.covariances2d.detach()
    half_x, half_y = d * cov[..., 0].clamp(min=0).sqrt(), d * cov[..., 2].clamp(min=0).sqrt()
    centre = projected.means2d.detach()
    # the tiles whose pixel centres the box may contain, clipped to the image
    x0 = torch.floor((centre[..., 0] - half_x) / size).clamp(min=0)
    x1 = torch.floor((centre[..., 0] + half_x) / size).clamp(max=tiles_x - 1)
    y0 = torch.floor((centre[..., 1] - half_y) / size).clamp(min=0)
    y1 = torch.floor((centre[..., 1] + half_y) / size).clamp(max=tiles_y - 1)
    touching = touching & (x1 >= x0) & (y1 >= y0) & torch.isfinite(centre).all(-1)
    camera, index = touching.nonzero(as_tuple=True)
    x0, x1, y0, y1 = (v[camera, index].long() for v in (x0, x1, y0, y1))
    span_x = x1 - x0 + 1
    per_gaussian = span_x * (y1 - y0 + 1)
    # the Gaussians front to back, so that the stable sort by tile below keeps that order in each tile
    order = torch.argsort(projected.depths.detach()[camera, index], stable=True)
    camera, index, x0, y0, span_x, per_gaussian = (v[order] for v in (camera, index, x0, y0, span_x, per_gaussian))
    total = int(per_gaussian.sum())
    owner = torch.repeat_interleave(torch.arange(len(per_gaussian), device=camera.device), per_gaussian,
                                    output_size=total)
    first = torch.cumsum(per_gaussian, 0) - per_gaussian
    k = torch.arange(total, device=camera.device) - first[owner]
    tile = (camera[owner] * (tiles_x * tiles_y) + (y0[owner] + k // span_x[owner]) * tiles_x
            + x0[owner] + k % span_x[owner])
    tile_sorted, by_tile = torch.sort(tile, stable=True)
    gaussian = (camera * n + index)[owner][by_tile]
    counts = torch.bincount(tile_sorted, minlength=batch * tiles_x * tiles_y)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return TileLists(gaussian, offsets, tiles_x, tiles_y, touching)


def _tile_pixels(tiles: Tensor, lists: TileLists, size: int, dtype: torch.dtype) -> Tensor:
    """Pixel centres [A,size*size,2] (x, y) of tiles [A] (global tile numbers)."""
    local = tiles % (lists.tiles_x * lists.tiles_y)
    ty, tx = local // lists.tiles_x, local % lists.tiles_x
    offset = torch.arange(size, device=tiles.device, dtype=dtype) + 0.5
    ys, xs = torch.meshgrid(offset, offset, indexing="ij")
    x = tx[:, None].to(dtype) * size + xs.reshape(1, -1)
    y = ty[:, None].to(dtype) * size + ys.reshape(1, -1)
    return torch.stack([x, y], dim=-1)


@dataclass
class _Block:
    """What a block's backward pass needs of its forward pass (all [A,P,K] but the inputs)."""

    dx: Tensor
    dy: Tensor
    alpha: Tensor  # after every cut and mask
    differentiable: Tensor  # where alpha = o exp(power) (not cut, masked or clamped)
    transmittance: Tensor  # T_j, in front of each Gaussian
    weights: Tensor  # T_j alpha_j
    conics: Tensor  # [A,K,3]
    opacities: Tensor  # [A,K]
    features: Tensor  # [A,K,F]


def _block_forward(pixels: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor,
                   valid: Tensor, log_t_in: Tensor, cfg: SplatRenderConfig) -> tuple[Tensor, Tensor, _Block]:
    """One block of K Gaussians (front to back) over A tiles' P pixels.
    pixels [A,P,2]; means2d [A,K,2]; conics [A,K,3]; opacities [A,K]; features [A,K,F]; valid [A,K];
    log_t_in [A,P] the log transmittance in front of the block.
    Returns the block's composited features F_B [A,P,F], sum_j log(1 - alpha_j) [A,P], and what its
    backward pass needs."""
    dx = pixels[:, :, None, 0] - means2d[:, None, :, 0]  # [A,P,K]
    dy = pixels[:, :, None, 1] - means2d[:, None, :, 1]
    a, b, c = (conics[:, None, :, i] for i in range(3))
    power = (a * dx + 2 * b * dy).mul_(dx).add_(c * dy * dy).mul_(-0.5)  # -d^2 / 2
    raw = torch.exp(power).mul_(opacities[:, None, :])
    keep = (power <= 0) & (raw >= cfg.min_alpha) & valid[:, None, :]
    differentiable = keep & (raw < cfg.max_alpha)
    alpha = raw.clamp_(max=cfg.max_alpha).mul_(keep)
    log_one_minus = torch.log1p(-alpha)
    log_t = torch.cumsum(log_one_minus, dim=-1).sub_(log_one_minus).add_(log_t_in[:, :, None])  # in front of each
    # early termination: a Gaussian counts while the transmittance in front of it is >= stop_transmittance
    alive = log_t >= math.log(cfg.stop_transmittance)
    alpha.mul_(alive)
    log_one_minus.mul_(alive)
    differentiable &= alive
    transmittance = log_t.exp_()
    weights = transmittance * alpha
    block = torch.bmm(weights, features)
    return block, log_one_minus.sum(-1), _Block(dx, dy, alpha, differentiable, transmittance, weights,
                                                conics, opacities, features)


def _block_backward(saved: _Block, grad: Tensor, grad_behind: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients (means2d [A,K,2], conics [A,K,3], opacities [A,K], features [A,K,F]) of
        s = sum_p g_p . F_B,p + h_p sum_j log(1 - alpha_pj),     grad = g [A,P,F], grad_behind = h [A,P],
    with T_in held constant (module doc). For alpha_j at one pixel, with c_k = w_k (g . f_k):
        ds/dalpha_j = T_j (g . f_j) - (sum_{k>j} c_k + h) / (1 - alpha_j),
    then alpha = o exp(power) and power = -(a dx^2 + 2 b dx dy + c dy^2) / 2, dx = x_pixel - x_mean."""
    g_dot_f = torch.bmm(grad, saved.features.transpose(1, 2))  # [A,P,K]
    contribution = saved.weights * g_dot_f
    behind = contribution.sum(-1, keepdim=True) - torch.cumsum(contribution, dim=-1)  # sum over k > j
    d_alpha = saved.transmittance * g_dot_f - (behind + grad_behind[:, :, None]) / (1 - saved.alpha)
    d_power = (d_alpha * saved.alpha).mul_(saved.differentiable)  # d alpha / d power = alpha
    d_opacities = d_power.sum(1) / saved.opacities  # d alpha / d o = alpha / o
    d_features = torch.bmm(saved.weights.transpose(1, 2), grad)
    dx, dy = saved.dx, saved.dy
    a, b, c = (saved.conics[:, None, :, i] for i in range(3))
    d_conics = torch.stack([(d_power * dx * dx).sum(1) * -0.5, -(d_power * dx * dy).sum(1),
                            (d_power * dy * dy).sum(1) * -0.5], dim=-1)
    d_means = torch.stack([(d_power * (a * dx + b * dy)).sum(1), (d_power * (b * dx + c * dy)).sum(1)], dim=-1)
    return d_means, d_conics, d_opacities, d_features


def _gather_block(tiles: Tensor, first: int, lists: TileLists, k: int) -> tuple[Tensor, Tensor]:
    """Gaussians first .. first + k - 1 [A,K] of the lists of `tiles` [A], and which of them exist [A,K]."""
    start = lists.offsets[tiles][:, None] + first + torch.arange(k, device=tiles.device)[None]
    valid = start < lists.offsets[tiles + 1][:, None]
    index = lists.gaussian[start.clamp(max=max(len(lists.gaussian) - 1, 0))]
    return index, valid


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, lists: TileLists, cfg: SplatRenderConfig):
        # keep the blocks for the backward pass while they fit in cache_elements (small images);
        # past that the backward pass recomputes them, so memory stays one chunk's
        kept, elements = [], 0
        blocks = _blocks(means2d, conics, opacities, features, lists, cfg)
        while True:
            try:
                item = next(blocks)
            except StopIteration as done:
                image = done.value
                break
            if kept is not None:
                elements += item[3].alpha.numel()
                if elements <= cfg.cache_elements:
                    kept.append(item)
                else:
                    kept = None
        ctx.save_for_backward(means2d, conics, opacities, features, image)
        ctx.lists, ctx.cfg, ctx.kept = lists, cfg, kept
        return image

    @staticmethod
    def backward(ctx, grad_image):
        means2d, conics, opacities, features, image = ctx.saved_tensors
        grad_image = grad_image.contiguous()
        grads = [torch.zeros_like(t) for t in (means2d, conics, opacities, features)]
        blocks = ctx.kept if ctx.kept is not None else _blocks(means2d, conics, opacities, features, ctx.lists,
                                                                 ctx.cfg)
        with torch.no_grad():
            for chunk, index, block, saved, in_front in blocks:
                g = grad_image[chunk]
                behind = image[chunk] - in_front - block  # what is composited behind the block
                block_grads = _block_backward(saved, g, (g * behind).sum(-1))
                flat = index.reshape(-1)
                for total, grad in zip(grads, block_grads):
                    total.index_add_(0, flat, grad.reshape(flat.numel(), *grad.shape[2:]))
        ctx.kept = None
        return (*grads, None, None)


@torch.no_grad()
def _blocks(means2d, conics, opacities, features, lists: TileLists, cfg: SplatRenderConfig):
    """The forward pass, block by block: yields (chunk of tiles [A], their Gaussians [A,K], the
    block's composited features [A,P,F], what its backward needs, the features composited in front
    of it [A,P,F]) and returns the composited features of every tile pixel [n_tiles,P,F]
    (P = tile_size^2). The backward pass replays exactly this (see the module doc).

    Each round takes the next k Gaussians of every tile whose list is that long and which has a
    pixel still seeing through, in chunks of at most chunk_elements pixel-Gaussian pairs; k depends
    only on how many tiles are active, so a replay makes the same blocks."""
    n_tiles = lists.offsets.numel() - 1
    pixels_per_tile, n_features = cfg.tile_size ** 2, features.shape[-1]
    dtype, device = means2d.dtype, means2d.device
    counts = lists.offsets[1:] - lists.offsets[:-1]
    longest = int(counts.max()) if n_tiles else 0
    log_t = torch.zeros(n_tiles, pixels_per_tile, dtype=dtype, device=device)
    accumulated = torch.zeros(n_tiles, pixels_per_tile, n_features, dtype=dtype, device=device)
    log_stop = math.log(cfg.stop_transmittance)
    start = 0
    while start < longest:
        active = ((counts > start) & (log_t >= log_stop).any(dim=1)).nonzero(as_tuple=True)[0]
        if len(active) == 0:
            break
        # a round takes the next k Gaussians of every active tile: at least `block`, more when few
        # tiles are left, up to the chunk (small images and the last, deepest tiles take few rounds)
        k = max(cfg.block, min(cfg.chunk_elements // (len(active) * pixels_per_tile), longest - start))
        per_chunk = max(1, cfg.chunk_elements // (pixels_per_tile * k))
        for chunk in active.split(per_chunk):
            index, valid = _gather_block(chunk, start, lists, k)
            pixels = _tile_pixels(chunk, lists, cfg.tile_size, dtype)
            block, log_sum, saved = _block_forward(pixels, means2d[index], conics[index], opacities[index],
                                                   features[index], valid, log_t[chunk], cfg)
            in_front = accumulated[chunk]  # a copy (advanced indexing)
            yield chunk, index, block, saved, in_front
            accumulated[chunk] = in_front + block
            log_t[chunk] += log_sum
        start += k
    return accumulated


def composite(means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, lists: TileLists,
              cfg: SplatRenderConfig, height: int, width: int, batch: int) -> Tensor:
    """Front-to-back compositing of the flattened [M = B*N] attributes (means2d [M,2], conics [M,3],
    opacities [M], features [M,F]) over their tile lists: the image of features [B,H,W,F]."""
    tiles = _Composite.apply(means2d, conics, opacities, features, lists, cfg)  # [n_tiles,P,F]
    size = cfg.tile_size
    n_features = features.shape[-1]
    image = tiles.reshape(batch, lists.tiles_y, lists.tiles_x, size, size, n_features)
    image = image.permute(0, 1, 3, 2, 4, 5).reshape(batch, lists.tiles_y * size, lists.tiles_x * size, n_features)
    return image[:, :height, :width]


def render_gaussians(means: Tensor, log_scales: Tensor, quaternions: Tensor, opacity_logits: Tensor,
                     colors: Tensor, background, cameras: Cameras, height: int, width: int, cfg: SplatRenderConfig,
                     background_color: Tensor | None = None) -> SplatOutput:
    """Render N Gaussians (means [N,3], log_scales [N,3], quaternions [N,4] w first, opacity_logits
    [N], colors [N,3] in [0,1]) from B cameras over `background` (a render.background.Background,
    or background_color [B,3]): rgb, opacity and depth, each [B,H,W,...]."""
    batch, n = len(cameras), means.shape[0]
    projected = project_gaussians(means, covariances_3d(log_scales, quaternions), cameras, height, width, cfg)
    opacities = torch.sigmoid(opacity_logits)
    lists = tile_intersections(projected, opacities, height, width, cfg)
    ones = torch.ones(batch, n, 1, dtype=means.dtype, device=means.device)
    features = torch.cat([colors.to(means.dtype).expand(batch, n, 3), ones, projected.depths[..., None]], dim=-1)
    image = composite(projected.means2d.reshape(-1, 2), projected.conics.reshape(-1, 3),
                      opacities.expand(batch, n).reshape(-1), features.reshape(batch * n, features.shape[-1]), lists, cfg,
                      height, width, batch)
    rgb, opacity, z = image[..., :3], image[..., 3:4], image[..., 4:5]
    # depth along each pixel's ray: the composited view-space z times |d| for the direction d with d_z = -1
    directions = pixel_directions(cameras.focal(height).to(means.dtype), height, width)  # [B,H,W,3]
    depth = z * directions.norm(dim=-1, keepdim=True)
    if background_color is not None:
        back = background_color.to(means.dtype)[:, None, None, :]
    else:
        world_directions = torch.einsum("bij,bhwj->bhwi", cameras.c2w[:, :3, :3].to(means.dtype), directions)
        back = background(world_directions).to(means.dtype)
    rgb = rgb + (1 - opacity) * back
    return SplatOutput(rgb, opacity, depth, pairs=len(lists.gaussian), means2d=projected.means2d,
                      drawn=lists.drawn)
