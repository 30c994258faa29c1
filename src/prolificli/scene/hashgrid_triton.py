"""The hash grid's lookup as Triton kernels: the fast path on CUDA without tiny-cuda-nn.

Same arithmetic as `hashgrid._HashGridLookup` (the pure-PyTorch path, which stays the CPU path
and the reference): per level, the point's cell, its 8 corners' rows (dense index, or the
uint32 hash XOR-ed and masked to the table size), trilinear weights, and the table's features,
stored feature-major [F, rows]. One program handles BLOCK points at one level:
- forward: out[n, l*F + f] = sum_c w_c(n) table[f, offset_l + row_c(n)];
- backward: grad_table[f, offset_l + row_c(n)] += w_c(n) grad_out[n, l*F + f], by atomic adds
  (so summation order, and the last bits, vary from run to run on a GPU).
Only the table gets a gradient: the NeRF's points are not optimised, so d/dx is not written.

Triton ships with CUDA builds of torch and compiles these at first use, no nvcc needed. Its
interpreter (TRITON_INTERPRET=1, set before triton is imported) runs the same kernels on CPU
tensors, which is how the tests check them against the PyTorch path on machines without a GPU.
Imported lazily: nothing here runs at `import prolificli`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .grid_levels import GridLevel

BLOCK = 256


@triton.jit
def _corner_rows_and_weights(px, py, pz, res, size, hashed, corner: tl.constexpr):
    """Row (within the level) and trilinear weight of corner (dx, dy, dz) = bits of `corner`."""
    resf = res.to(tl.float32)
    x, y, z = px * resf, py * resf, pz * resf
    cx = tl.minimum(tl.maximum(tl.floor(x), 0.0), resf - 1.0)
    cy = tl.minimum(tl.maximum(tl.floor(y), 0.0), resf - 1.0)
    cz = tl.minimum(tl.maximum(tl.floor(z), 0.0), resf - 1.0)
    fx, fy, fz = x - cx, y - cy, z - cz
    dx: tl.constexpr = (corner >> 2) & 1
    dy: tl.constexpr = (corner >> 1) & 1
    dz: tl.constexpr = corner & 1
    ix = cx.to(tl.int32) + dx
    iy = cy.to(tl.int32) + dy
    iz = cz.to(tl.int32) + dz
    wx = fx if dx == 1 else 1.0 - fx
    wy = fy if dy == 1 else 1.0 - fy
    wz = fz if dz == 1 else 1.0 - fz
    # hashgrid.HASH_PRIME_Y / _Z (tiny-cuda-nn's primes); uint32 arithmetic wraps like its hash,
    # and the mask keeps the low log2(T) bits
    hashed_row = (ix.to(tl.uint32) ^ (iy.to(tl.uint32) * 2654435761) ^ (iz.to(tl.uint32) * 805459861)) \
        & (size - 1).to(tl.uint32)
    side = res + 1
    dense_row = ix + side * iy + side * side * iz
    row = tl.where(hashed != 0, hashed_row.to(tl.int32), dense_row)
    return row, wx * wy * wz


@triton.jit
def _this_block(x_ptr, res_ptr, offset_ptr, size_ptr, hashed_ptr, n, BLOCK: tl.constexpr):
    """This program's level and points: (level, point indices, valid, x, y, z, the level's constants)."""
    level = tl.program_id(1)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < n
    px = tl.load(x_ptr + idx * 3, mask=valid, other=0.0)
    py = tl.load(x_ptr + idx * 3 + 1, mask=valid, other=0.0)
    pz = tl.load(x_ptr + idx * 3 + 2, mask=valid, other=0.0)
    res = tl.load(res_ptr + level)
    offset = tl.load(offset_ptr + level)
    size = tl.load(size_ptr + level)
    hashed = tl.load(hashed_ptr + level)
    return level, idx, valid, px, py, pz, res, offset, size, hashed


@triton.jit
def _forward_kernel(x_ptr, table_ptr, out_ptr, res_ptr, offset_ptr, size_ptr, hashed_ptr, n, rows, n_levels,
                    F: tl.constexpr, BLOCK: tl.constexpr):
    level, idx, valid, px, py, pz, res, offset, size, hashed = _this_block(
        x_ptr, res_ptr, offset_ptr, size_ptr, hashed_ptr, n, BLOCK)
    features = tl.arange(0, F)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    for corner in tl.static_range(8):
        row, weight = _corner_rows_and_weights(px, py, pz, res, size, hashed, corner)
        value = tl.load(table_ptr + features[None, :] * rows + (offset + row)[:, None], mask=valid[:, None], other=0.0)
        acc += weight[:, None] * value.to(tl.float32)
    tl.store(out_ptr + idx[:, None] * (n_levels * F) + level * F + features[None, :], acc, mask=valid[:, None])


@triton.jit
def _backward_kernel(x_ptr, grad_out_ptr, grad_table_ptr, res_ptr, offset_ptr, size_ptr, hashed_ptr, n, rows,
                     n_levels, F: tl.constexpr, BLOCK: tl.constexpr):
    level, idx, valid, px, py, pz, res, offset, size, hashed = _this_block(
        x_ptr, res_ptr, offset_ptr, size_ptr, hashed_ptr, n, BLOCK)
    features = tl.arange(0, F)
    grad = tl.load(grad_out_ptr + idx[:, None] * (n_levels * F) + level * F + features[None, :],
                   mask=valid[:, None], other=0.0).to(tl.float32)
    for corner in tl.static_range(8):
        row, weight = _corner_rows_and_weights(px, py, pz, res, size, hashed, corner)
        tl.atomic_add(grad_table_ptr + features[None, :] * rows + (offset + row)[:, None], weight[:, None] * grad,
                      mask=valid[:, None])


def level_tensors(levels: list[GridLevel], device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """resolution, offset, size, hashed per level, as int32 tensors the kernels index by level."""
    def column(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    return (column([lv.resolution for lv in levels]), column([lv.offset for lv in levels]),
            column([lv.size for lv in levels]), column([int(lv.hashed) for lv in levels]))


class TritonHashGridLookup(torch.autograd.Function):
    """features [N, L*F] from x [N,3] in [0,1] and the table [F, rows]; gradient for the table only."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, levels: list[GridLevel]) -> Tensor:
        n_features, rows = table.shape
        if n_features & (n_features - 1):
            raise ValueError(f"the Triton hash grid needs a power-of-two n_features_per_level, got {n_features}")
        x = x.contiguous().float()
        table = table.contiguous()
        meta = level_tensors(levels, x.device)
        n = x.shape[0]
        out = torch.empty(n, len(levels) * n_features, device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(max(n, 1), BLOCK), len(levels))
        if n:
            _forward_kernel[grid](x, table, out, *meta, n, rows, len(levels), F=n_features, BLOCK=BLOCK)
        ctx.save_for_backward(x, *meta)
        ctx.shape = (n_features, rows, len(levels))
        ctx.table_dtype = table.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, *meta = ctx.saved_tensors
        n_features, rows, n_levels = ctx.shape
        grad_table = torch.zeros(n_features, rows, device=x.device, dtype=torch.float32)
        n = x.shape[0]
        if n:
            grid = (triton.cdiv(n, BLOCK), n_levels)
            _backward_kernel[grid](x, grad_out.contiguous(), grad_table, *meta, n, rows, n_levels,
                                   F=n_features, BLOCK=BLOCK)
        return None, grad_table.to(ctx.table_dtype), None

