"""Volume rendering of a density/albedo field inside the box [-bound, bound]^3.

Per ray: intersect the box; n_coarse stratified samples between the entry and exit distances;
n_fine more by inverse-CDF sampling of the coarse compositing weights; then the field is evaluated
on the sorted union (64 + 32 = 96 points per ray, as ProlificDreamer) and alpha-composited:
    alpha_i = 1 - exp(-sigma_i delta_i),   T_i = prod_{j<i} (1 - alpha_j),   w_i = T_i alpha_i
    rgb = sum w_i albedo_i,   opacity = sum w_i,   depth = sum w_i t_i   (expected depth).
Each sample stands for the interval between the midpoints to its neighbours, the first and last
reaching the box faces, so the deltas of a ray sum to its chord length through the box and a
constant density sigma gives exactly opacity 1 - exp(-sigma * chord).

Rendering is two steps, pure functions of their inputs:
- `plan_samples` (no gradients) decides where a ray is sampled. With an occupancy grid it drops
  the samples in cells the grid marks empty and those behind the point where the ray's
  transmittance falls below `occupancy.stop_transmittance`, so rays carry different numbers of
  samples: `RaySamples` packs them ray after ray, without padding.
- `shade_samples` evaluates the field at the planned samples and composites each ray's segment;
  it is the only part with a graph.

Deferred back-propagation (`render(..., deferred=True)`): the image is rendered without a graph,
chunk by chunk, and returned as leaf tensors; the caller's loss backpropagates down to them
(through the prior's encoder only). `RenderOutput.replay()` then re-shades the same planned
samples in chunks of cfg.grad_chunk_rays with the graph and backpropagates each chunk with its
slice of the image gradient. Because the samples are replayed exactly, the parameter gradient is
the full-graph gradient, while memory holds one chunk's graph instead of the image's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from ..config import VolumeRenderConfig
from .occupancy import OccupancyGrid


@dataclass
class RenderOutput:
    rgb: Tensor  # [B,H,W,3] composited over the background
    opacity: Tensor  # [B,H,W,1]
    depth: Tensor  # [B,H,W,1] expected distance along the ray (0 where nothing is hit)
    samples_per_ray: float = 0.0  # mean field evaluations per ray in the shading pass
    # deferred renders only: after backpropagating into rgb/opacity/depth (leaf tensors), carries
    # their gradients on into the field and background parameters
    replay: Callable[[], None] | None = None


@dataclass
class RaySamples:
    """N samples on R rays, packed ray after ray: ray r owns the `counts[r]` consecutive entries
    starting at its offset, sorted by distance; a ray with count 0 has no samples.

    counts [R] long; t [N] distance along the ray; delta [N] length of the interval the sample
    stands for (kept from the dense sampling when samples are dropped, so a dropped sample counts
    as zero density, not as a longer interval for its neighbours).
    """

    counts: Tensor
    t: Tensor
    delta: Tensor

    @property
    def n_rays(self) -> int:
        return self.counts.shape[0]

    def ray_index(self) -> Tensor:
        """[N] the ray of every sample."""
        return torch.repeat_interleave(torch.arange(self.n_rays, device=self.counts.device), self.counts,
                                       output_size=self.t.shape[0])

    def select(self, keep: Tensor) -> RaySamples:
        """The samples where keep [N] is true, still packed."""
        counts = torch.zeros_like(self.counts).index_add_(0, self.ray_index(), keep.long())
        return RaySamples(counts, self.t[keep], self.delta[keep])

    def slices(self, chunk: int) -> list[tuple[int, int, RaySamples]]:
        """(first ray, end ray, samples) for consecutive ranges of `chunk` rays."""
        starts = list(range(0, self.n_rays, chunk))
        ends = [min(s + chunk, self.n_rays) for s in starts]
        offsets = torch.cat([self.counts.new_zeros(1), torch.cumsum(self.counts, 0)])
        bounds = offsets[torch.tensor(starts + [self.n_rays])].tolist()  # one host read for all chunks
        return [(s, e, RaySamples(self.counts[s:e], self.t[bounds[k]:bounds[k + 1]], self.delta[bounds[k]:bounds[k + 1]]))
                for k, (s, e) in enumerate(zip(starts, ends))]

    @staticmethod
    def cat(parts: list[RaySamples]) -> RaySamples:
        return RaySamples(*(torch.cat([getattr(p, name) for p in parts]) for name in ("counts", "t", "delta")))


def intersect_box(origins: Tensor, directions: Tensor, bound: float, near: float) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against [-bound, bound]^3: entry distance (>= near), exit distance, hit mask; all [R]."""
    # a ray parallel to a slab (direction component 0) must get slab distances of +-"infinity"
    # with the right signs; dividing by a tiny number instead of 0 gives that without inf/NaN
    safe = torch.where(directions == 0, torch.full_like(directions, 1e-12), directions)
    t_low = (-bound - origins) / safe
    t_high = (bound - origins) / safe
    t_enter = torch.minimum(t_low, t_high).amax(dim=-1).clamp_min(near)  # cameras may sit inside the box
    t_exit = torch.maximum(t_low, t_high).amin(dim=-1)
    return t_enter, t_exit, t_exit > t_enter


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def stratified_samples(
    t_near: Tensor, t_far: Tensor, n: int, stratified: bool, generator: torch.Generator | None = None
) -> Tensor:
    """n sorted distances [R,n]: one per equal bin of [near, far], jittered in its bin or at its centre."""
    offsets = _uniform((t_near.shape[0], n), t_near, generator) if stratified else torch.full_like(t_near, 0.5)[:, None]
    u = (torch.arange(n, device=t_near.device, dtype=t_near.dtype) + offsets) / n
    return t_near[:, None] + (t_far - t_near)[:, None] * u


def interval_edges(t: Tensor, t_near: Tensor, t_far: Tensor) -> Tensor:
    """[R,S+1]: near, the midpoints between consecutive samples, far. Sample i owns [edge_i, edge_i+1]."""
    midpoints = 0.5 * (t[:, 1:] + t[:, :-1])
    return torch.cat([t_near[:, None], midpoints, t_far[:, None]], dim=-1)


def compositing_weights(density: Tensor, deltas: Tensor) -> Tensor:
    """w_i = T_i alpha_i, [R,S] (every ray with the same number of samples).

    T_i = prod_{j<i}(1 - alpha_j) is computed as exp(-sum_{j<i} sigma_j delta_j), the same number,
    because cumprod's backward divides by its factors and breaks down when one of them is 0.
    """
    optical_depth = density * deltas
    alpha = 1 - torch.exp(-optical_depth)
    accumulated = torch.cumsum(optical_depth, dim=-1) - optical_depth  # exclusive sum
    return alpha * torch.exp(-accumulated)


def packed_transmittance(density: Tensor, delta: Tensor, counts: Tensor,
                         ray_index: Tensor) -> tuple[Tensor, Tensor]:
    """(T_i, alpha_i), each [N], for packed samples (counts [R] per ray, ray_index [N] from
    `RaySamples.ray_index`): T_i = exp(-sum of sigma_j delta_j over the samples j before i on
    the same ray).

    The per-ray exclusive sum is a cumulative sum over all N samples minus its value where the
    ray starts. The global sum grows with the number of rays (millions at 512 px), where float32
    would keep too few digits for the difference, so it runs in float64.
    """
    optical_depth = density * delta
    inclusive = torch.cumsum(optical_depth.double(), 0)
    exclusive = inclusive - optical_depth.double()
    ray_start = torch.cumsum(counts, 0) - counts  # [R] index of each ray's first sample
    accumulated = (exclusive - exclusive[ray_start[ray_index]]).to(density.dtype)
    return torch.exp(-accumulated), 1 - torch.exp(-optical_depth)


def packed_compositing_weights(density: Tensor, delta: Tensor, counts: Tensor, ray_index: Tensor) -> Tensor:
    """w_i = T_i alpha_i [N] for packed samples (see `packed_transmittance`)."""
    transmittance, alpha = packed_transmittance(density, delta, counts, ray_index)
    return transmittance * alpha


def sample_pdf(
    edges: Tensor, weights: Tensor, n: int, stratified: bool, generator: torch.Generator | None = None
) -> Tensor:
    """n distances [R,n] drawn by inverse CDF from the piecewise-constant density over the bins.

    edges [R,K+1], weights [R,K] (non-negative, unnormalised). A small floor on the weights keeps a
    ray with no density sampling uniformly instead of dividing by zero.
    """
    weights = weights + 1e-5
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # [R,K+1]
    cdf[:, -1] = 1.0
    rays = edges.shape[0]
    if stratified:
        offsets = _uniform((rays, n), edges, generator)
    else:
        offsets = torch.full((rays, n), 0.5, device=edges.device, dtype=edges.dtype)
    u = (torch.arange(n, device=edges.device, dtype=edges.dtype) + offsets) / n  # sorted, in (0,1)
    k = weights.shape[1]
    upper = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(1, k)  # the bin is [upper-1, upper]
    lower = upper - 1
    cdf_lower, cdf_upper = cdf.gather(1, lower), cdf.gather(1, upper)
    edge_lower, edge_upper = edges.gather(1, lower), edges.gather(1, upper)
    fraction = (u - cdf_lower) / (cdf_upper - cdf_lower).clamp_min(1e-12)
    return edge_lower + fraction.clamp(0, 1) * (edge_upper - edge_lower)


def _density_where_occupied(field: nn.Module, points: Tensor, occupancy: OccupancyGrid | None) -> Tensor:
    """field.density at points [M,3], run only where the grid marks the cell occupied (0 elsewhere)."""
    if occupancy is None:
        return field.density(points)
    occupied = occupancy.occupied_at(points)
    density = points.new_zeros(points.shape[0])
    if bool(occupied.any()):
        density[occupied] = field.density(points[occupied])
    return density


@torch.no_grad()
def plan_samples(
    field: nn.Module,
    origins: Tensor,
    directions: Tensor,
    cfg: VolumeRenderConfig,
    *,
    generator: torch.Generator | None = None,
    stratified: bool = True,
    occupancy: OccupancyGrid | None = None,
) -> RaySamples:
    """Where to evaluate the field along R rays (origins, unit directions [R,3]): packed samples.

    Rays that miss the box get none. Without an occupancy grid every hit ray gets
    n_coarse + n_fine samples. With one (an `OccupancyGrid`), the coarse pass reads density only
    in occupied cells, and of the union the samples in empty cells and those where the ray's
    transmittance is already below occupancy.stop_transmittance are dropped.
    """
    rays = origins.shape[0]
    t_near, t_far, hit = intersect_box(origins, directions, field.bound, cfg.near)
    index = hit.nonzero().squeeze(1)
    counts = torch.zeros(rays, dtype=torch.long, device=origins.device)
    if len(index) == 0:
        return RaySamples(counts, origins.new_zeros(0), origins.new_zeros(0))
    o, d, t_near, t_far = origins[index], directions[index], t_near[index], t_far[index]

    def points(t: Tensor) -> Tensor:
        return (o[:, None, :] + t[..., None] * d[:, None, :]).reshape(-1, 3)

    t_all = stratified_samples(t_near, t_far, cfg.n_coarse, stratified, generator)
    if cfg.n_fine > 0:
        # The coarse pass only decides where the fine samples go, so it needs density alone,
        # without gradients; the field later runs once on the sorted union, re-evaluating the
        # coarse points, which is cheaper than keeping two graphs.
        edges = interval_edges(t_all, t_near, t_far)
        density = _density_where_occupied(field, points(t_all), occupancy).view(len(index), -1)
        weights = compositing_weights(density, edges.diff(dim=-1))
        t_fine = sample_pdf(edges, weights, cfg.n_fine, stratified, generator)
        t_all, _ = torch.sort(torch.cat([t_all, t_fine], dim=-1), dim=-1)
    delta = interval_edges(t_all, t_near, t_far).diff(dim=-1)
    counts[index] = t_all.shape[1]
    samples = RaySamples(counts, t_all.reshape(-1), delta.reshape(-1))
    if occupancy is None:
        return samples
    # empty space: drop what lies in empty cells, then what lies behind an opaque stretch
    samples = samples.select(occupancy.occupied_at(points(t_all)))
    if samples.t.shape[0] == 0:
        return samples
    ray_index = samples.ray_index()
    at = origins[ray_index] + samples.t[:, None] * directions[ray_index]
    transmittance, _ = packed_transmittance(field.density(at), samples.delta, samples.counts, ray_index)
    return samples.select(transmittance >= occupancy.cfg.stop_transmittance)


def shade_samples(field: nn.Module, origins: Tensor, directions: Tensor,
                  samples: RaySamples) -> tuple[Tensor, Tensor, Tensor]:
    """The field at the planned samples, composited per ray: rgb [R,3] (premultiplied, no
    background), opacity [R,1], depth [R,1]; zeros for rays without samples. Differentiable in
    the field's parameters when gradients are enabled."""
    rays = origins.shape[0]
    if samples.t.shape[0] == 0:
        zeros = origins.new_zeros(rays, 1)
        return zeros.expand(rays, 3), zeros, zeros
    ray_index = samples.ray_index()
    density, albedo = field(origins[ray_index] + samples.t[:, None] * directions[ray_index])
    weights = packed_compositing_weights(density, samples.delta.to(density.dtype), samples.counts, ray_index)

    def per_ray(values: Tensor) -> Tensor:  # [N,C] -> sum over each ray's samples [R,C]
        return values.new_zeros(rays, values.shape[1]).index_add(0, ray_index, values).to(origins.dtype)

    return per_ray(weights[:, None] * albedo), per_ray(weights[:, None]), per_ray((weights * samples.t)[:, None])


def render_rays(
    field: nn.Module,
    origins: Tensor,
    directions: Tensor,
    cfg: VolumeRenderConfig,
    *,
    generator: torch.Generator | None = None,
    stratified: bool = True,
    occupancy: OccupancyGrid | None = None,
) -> dict[str, Tensor]:
    """Render R rays (unit directions) in one piece. Returns rgb [R,3] (premultiplied, no
    background), opacity [R,1], depth [R,1]; rays that miss the box get zeros."""
    samples = plan_samples(field, origins, directions, cfg, generator=generator, stratified=stratified,
                           occupancy=occupancy)
    rgb, opacity, depth = shade_samples(field, origins, directions, samples)
    return {"rgb": rgb, "opacity": opacity, "depth": depth}


def use_deferred(cfg: VolumeRenderConfig, n_rays: int) -> bool:
    """render.deferred: always, never, or auto = when the image has more rays than one grad chunk."""
    return cfg.deferred == "always" or (cfg.deferred == "auto" and n_rays > cfg.grad_chunk_rays)


def render(
    field: nn.Module,
    background: nn.Module,
    cameras: Cameras,
    height: int,
    width: int,
    cfg: VolumeRenderConfig,
    *,
    background_color: Tensor | None = None,
    generator: torch.Generator | None = None,
    stratified: bool = True,
    occupancy: OccupancyGrid | None = None,
    deferred: bool = False,
) -> RenderOutput:
    """Render B cameras to [B,H,W,3] images composited over the background.

    background_color [B,3], when given, replaces the background by a solid colour per image (the
    random-colour augmentation). Samples are planned in chunks of cfg.chunk_rays rays (so the
    random draws, and the samples, are the same with and without `deferred`). Without gradients
    the rays are also shaded chunk by chunk; with gradients and not deferred, the image is shaded
    as one graph; deferred: see the module docstring.
    """
    origins, directions = cameras.rays(height, width)
    batch, n_rays = len(cameras), len(cameras) * height * width
    flat_origins, flat_directions = origins.reshape(-1, 3), directions.reshape(-1, 3)

    def background_rgb(start: int = 0, end: int = n_rays) -> Tensor:  # [end - start, 3]
        if background_color is not None:
            colour = background_color.to(flat_origins)[:, None, :].expand(batch, height * width, 3)
            return colour.reshape(-1, 3)[start:end]
        return background(flat_directions[start:end]).to(flat_origins.dtype)

    def plan(start: int) -> RaySamples:
        end = start + cfg.chunk_rays
        return plan_samples(field, flat_origins[start:end], flat_directions[start:end], cfg,
                            generator=generator, stratified=stratified, occupancy=occupancy)

    def image(rgb: Tensor, opacity: Tensor, depth: Tensor, samples: int) -> RenderOutput:
        return RenderOutput(rgb.view(batch, height, width, 3), opacity.view(batch, height, width, 1),
                            depth.view(batch, height, width, 1), samples / max(n_rays, 1))

    starts = range(0, n_rays, cfg.chunk_rays)
    if not torch.is_grad_enabled() or deferred:
        plans, parts, total = [], [], 0
        with torch.no_grad():
            for start in starts:
                samples = plan(start)
                end = start + samples.n_rays
                parts.append(shade_samples(field, flat_origins[start:end], flat_directions[start:end], samples))
                total += samples.t.shape[0]
                if deferred:
                    plans.append(samples)
            foreground, opacity, depth = (torch.cat(p) for p in zip(*parts))
            rgb = foreground + (1 - opacity) * background_rgb()
        out = image(rgb, opacity, depth, total)
        if not deferred:
            return out
        leaves = [out.rgb.requires_grad_(), out.opacity.requires_grad_(), out.depth.requires_grad_()]
        out.replay = lambda: _replay(field, flat_origins, flat_directions, RaySamples.cat(plans), leaves,
                                     background_rgb, cfg.grad_chunk_rays)
        return out

    samples = RaySamples.cat([plan(start) for start in starts])
    foreground, opacity, depth = shade_samples(field, flat_origins, flat_directions, samples)
    rgb = foreground + (1 - opacity) * background_rgb()
    return image(rgb, opacity, depth, samples.t.shape[0])


def _replay(field: nn.Module, origins: Tensor, directions: Tensor, samples: RaySamples, leaves: list[Tensor],
            background_rgb: Callable[[int, int], Tensor], chunk: int) -> None:
    """Deferred back-propagation's second pass: re-shade `samples` chunk by chunk with the graph,
    composite over the background, and backpropagate the leaves' gradients [R,C] slice by slice."""
    grads = [None if leaf.grad is None else leaf.grad.reshape(origins.shape[0], -1) for leaf in leaves]
    if all(g is None for g in grads):
        return
    for start, end, part in samples.slices(chunk):
        foreground, opacity, depth = shade_samples(field, origins[start:end], directions[start:end], part)
        rgb = foreground + (1 - opacity) * background_rgb(start, end)
        outputs = [(out, g[start:end]) for out, g in zip((rgb, opacity, depth), grads) if g is not None]
        torch.autograd.backward([o for o, _ in outputs], [g for _, g in outputs])
