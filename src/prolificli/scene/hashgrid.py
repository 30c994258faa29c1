"""Multi-resolution hash encoding (Instant-NGP, Müller et al. 2022) in pure PyTorch.

Level l has a grid of resolution floor(base * scale^l) cells per axis, i.e. (res+1)^3 vertices.
Each vertex owns a learned feature vector of length F, stored in a table: directly (dense) when
all vertices fit in the table size T, else through the spatial hash
    h(x, y, z) = (x * 1  XOR  y * 2654435761  XOR  z * 805459861) mod T.
A point's feature at level l is the trilinear interpolation of its cell's 8 corner features; the
encoding concatenates the levels -> [N, n_levels * F] (level-major, as tiny-cuda-nn).

Speed on CPU: the lookup is a custom autograd Function, vectorised over points with a Python
loop over levels only. Measured on this project's 2-core CPU, the layout decides the speed:
- points are processed transposed ([3,N], corners [8,N]) and the table is feature-major [F, rows],
  so every element-wise op and gather runs on long contiguous vectors (a trailing dimension of 2
  or 8, as in [N,8,F], defeats vectorisation and was several times slower);
- all integer arithmetic is int32: int64 multiply and float->int64 conversion are an order of
  magnitude slower, and int32 multiplication wraps modulo 2^32 like tiny-cuda-nn's uint32 hash,
  so the low log2(T) bits, the only ones kept, are identical;
- backward scatters into the table with `torch.bincount(rows, weights=...)`, well ahead of
  `index_add_`, `index_put_(accumulate=True)` and embedding_bag's sort-based backward.

`make_hash_grid` picks tiny-cuda-nn (`TcnnHashGrid`) when asked to and available. On CUDA tensors
`HashGrid` itself runs Triton kernels (`hashgrid_triton.py`) when Triton imports, the same
arithmetic as the PyTorch path here, which stays the CPU path and their reference.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..config import HashGridConfig
from .grid_levels import HASH_PRIME_Y, HASH_PRIME_Z, GridLevel, grid_levels


def _as_int32(value: int) -> int:
    """The int32 with the same low 32 bits (2654435761 does not fit in a signed int32)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def _cell_corners(x_t: Tensor, level: GridLevel) -> tuple[Tensor, Tensor, Tensor]:
    """Corner rows of the level table [8,N] (int32), trilinear weights [8,N], per-axis weights [2,3,N].

    Takes points transposed, x_t [3,N]: with N as the innermost dimension every element-wise op
    below runs on long contiguous vectors (a trailing dimension of 2 or 8 defeats vectorisation
    and was ~10x slower). Corner c = 4*dx + 2*dy + dz for the corner offset (dx, dy, dz) in {0,1}^3.
    """
    n = x_t.shape[1]
    position = x_t * level.resolution
    # clamp so that x = 1 falls in the last cell (with fraction 1) instead of past the grid
    cell = position.floor().clamp_(0, level.resolution - 1)
    axis_weights = x_t.new_empty(2, 3, n)  # weight of the lower / upper vertex per axis
    torch.sub(position, cell, out=axis_weights[1])
    torch.neg(axis_weights[1], out=axis_weights[0]).add_(1.0)
    cell = cell.to(torch.int32)
    step = torch.tensor([[0], [1]], dtype=torch.int32, device=x_t.device)
    cx = cell[0] + step  # [2,N]: lower and upper vertex per axis
    cy = cell[1] + step
    cz = cell[2] + step
    if level.hashed:
        mask = level.size - 1  # the table size is a power of two: mod T == AND (T-1)
        cy = (cy * _as_int32(HASH_PRIME_Y)) & mask
        cz = (cz * _as_int32(HASH_PRIME_Z)) & mask
        rows = (cx[:, None] ^ cy[None, :]).view(4, 1, n) ^ cz[None]
    else:
        side = level.resolution + 1
        rows = (cx[:, None] + side * cy[None, :]).view(4, 1, n) + (side * side) * cz[None]
    wx, wy, wz = axis_weights.unbind(1)
    weights = (wx[:, None] * wy[None, :]).view(4, 1, n) * wz[None]
    return rows.view(8, n), weights.view(8, n), axis_weights


# Corner indices and weights are kept from forward for backward up to this size (~1 GiB: 64x64
# pixels x 96 samples x 16 levels needs ~0.6 GiB); beyond it (high resolutions, big GPU batches)
# backward recomputes them, which costs a few element-wise ops per level.
_KEEP_CORNERS_MAX_BYTES = 2**30


class _HashGridLookup(torch.autograd.Function):
    """features [N, L*F] = trilinear interpolation of the table at x [N,3] on every level.

    The table is stored feature-major, [F, rows]: gathering one feature channel at a time from a
    contiguous row gives contiguous [8,N] blocks, again for vectorisation.
    """

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, levels: list[GridLevel], will_backward: bool) -> Tensor:
        n_features, n = table.shape[0], x.shape[0]
        x_t = x.t().contiguous()
        out_t = x.new_empty(len(levels) * n_features, n)
        # keep each level's corners for backward unless that would hold too much memory
        corner_bytes = (8 + 8 + 6) * 4 * n * len(levels)  # rows, weights, axis weights
        keep_corners = will_backward and corner_bytes <= _KEEP_CORNERS_MAX_BYTES
        ctx.corners = []
        for i, level in enumerate(levels):
            rows, weights, axis_weights = _cell_corners(x_t, level)
            if keep_corners:
                ctx.corners.append((rows, weights, axis_weights))
            rows = rows.view(-1)
            for f in range(n_features):
                level_table = table[f, level.offset : level.offset + level.size]
                corner_features = level_table.index_select(0, rows).view(8, n)
                torch.sum(corner_features.mul_(weights), dim=0, out=out_t[i * n_features + f])
        ctx.save_for_backward(x_t, table)
        ctx.levels = levels
        return out_t.t()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x_t, table = ctx.saved_tensors
        levels: list[GridLevel] = ctx.levels
        n_features, n = table.shape[0], x_t.shape[1]
        grad_out_t = grad_out.t().contiguous()  # [L*F, N]
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table = torch.zeros_like(table) if need_table else None
        grad_x_t = torch.zeros_like(x_t) if need_x else None
        for i, level in enumerate(levels):
            rows, weights, axis_weights = ctx.corners[i] if ctx.corners else _cell_corners(x_t, level)
            rows = rows.view(-1)
            grad_weights = torch.zeros_like(weights) if need_x else None
            for f in range(n_features):
                grad_feature = grad_out_t[i * n_features + f]  # [N]
                if need_table:
                    # bincount with weights is the fastest scatter-add on CPU (int32 rows,
                    # contiguous weights), well ahead of index_add_ and index_put_
                    grad_table[f, level.offset : level.offset + level.size] += torch.bincount(
                        rows, weights=(weights * grad_feature).view(-1), minlength=level.size
                    )
                if need_x:
                    level_table = table[f, level.offset : level.offset + level.size]
                    grad_weights += level_table.index_select(0, rows).view(8, n) * grad_feature
            if need_x:
                g = grad_weights.view(2, 2, 2, n)
                wx, wy, wz = axis_weights.unbind(1)
                # d w_c / d frac_axis = (+1 for the upper vertex, -1 for the lower) * the other two weights
                dx = g[1] - g[0]  # [2(y),2(z),N]
                dy = g[:, 1] - g[:, 0]  # [2(x),2(z),N]
                dz = g[:, :, 1] - g[:, :, 0]  # [2(x),2(y),N]
                grad_frac = torch.stack(
                    [
                        (dx * wy[:, None] * wz[None, :]).sum((0, 1)),
                        (dy * wx[:, None] * wz[None, :]).sum((0, 1)),
                        (dz * wx[:, None] * wy[None, :]).sum((0, 1)),
                    ]
                )
                # frac = x * res - floor(x * res), and the floor is piecewise constant
                grad_x_t += grad_frac * level.resolution
        ctx.corners = []
        grad_x = grad_x_t.t() if need_x else None
        return grad_x, grad_table, None, None


class HashGrid(nn.Module):
    """Instant-NGP hash encoding: x [N,3] in [0,1] -> features [N, n_levels * n_features_per_level].

    `table` [F, rows] holds every level's features; level l owns rows
    levels[l].offset : levels[l].offset + levels[l].size (dense levels need fewer than T rows).
    """

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        self.cfg = cfg
        self.levels = grid_levels(cfg)
        n_rows = self.levels[-1].offset + self.levels[-1].size
        # Instant-NGP initialises the table uniformly in [-1e-4, 1e-4]
        self.table = nn.Parameter(torch.empty(cfg.n_features_per_level, n_rows).uniform_(-1e-4, 1e-4))
        self.out_dim = cfg.n_levels * cfg.n_features_per_level

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.table.dtype).clamp(0.0, 1.0)
        if self._use_triton(x):
            from .hashgrid_triton import TritonHashGridLookup

            return TritonHashGridLookup.apply(x, self.table, self.levels)
        will_backward = torch.is_grad_enabled() and (x.requires_grad or self.table.requires_grad)
        return _HashGridLookup.apply(x, self.table, self.levels, will_backward)

    def _use_triton(self, x: Tensor) -> bool:
        """backend triton: always (on CPU tensors only under TRITON_INTERPRET=1); auto: on CUDA
        tensors when Triton imports. Not when x itself needs a gradient (the kernels write none)."""
        if x.requires_grad and torch.is_grad_enabled():
            return False
        if self.cfg.backend == "triton":
            return True
        return self.cfg.backend == "auto" and x.is_cuda and _triton_importable()


class TcnnHashGrid(nn.Module):
    """The same hyper-parameters through tiny-cuda-nn's fused CUDA kernels (imported only when built).

    tiny-cuda-nn places its vertices slightly differently (level scale base * s^l - 1, a half-cell
    offset) and lays out its parameters its own way, so a table trained with one backend cannot be
    loaded into the other; the encodings are equivalent in kind, not bit for bit.
    """

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        import tinycudann as tcnn  # CUDA extension: import lazily, only when this backend is chosen

        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": cfg.n_levels,
                "n_features_per_level": cfg.n_features_per_level,
                "log2_hashmap_size": cfg.log2_hashmap_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": cfg.per_level_scale,
            },
        )
        self.out_dim = self.encoding.n_output_dims

    def forward(self, x: Tensor) -> Tensor:
        # tcnn returns half precision on most GPUs; the decoder works in float32
        return self.encoding(x.clamp(0.0, 1.0)).float()


@functools.cache  # asked on every CUDA lookup: decide once
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401  (ships with CUDA builds of torch)
    except ImportError:
        return False
    return True


def _tcnn_usable() -> bool:
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def make_hash_grid(cfg: HashGridConfig) -> nn.Module:
    """backend torch: `HashGrid`; tcnn: `TcnnHashGrid` or an error; auto: tcnn when importable with CUDA."""
    if cfg.backend == "tcnn":
        try:
            import tinycudann  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "hash grid backend 'tcnn' needs tiny-cuda-nn (the `tinycudann` Python module), which "
                f"could not be imported ({exc}); install it on a CUDA machine, or set "
                "nerf.field.grid.backend=torch (or auto)"
            ) from None
        if not torch.cuda.is_available():
            raise RuntimeError("hash grid backend 'tcnn' needs a CUDA GPU; set nerf.field.grid.backend=torch")
        return TcnnHashGrid(cfg)
    if cfg.backend == "auto" and _tcnn_usable():
        return TcnnHashGrid(cfg)
    return HashGrid(cfg)
