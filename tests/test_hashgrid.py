"""The hash encoding against a deliberately naive per-point / per-level / per-corner reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from prolificli.config import HashGridConfig
from prolificli.scene import hashgrid
from prolificli.scene.hashgrid import HashGrid, make_hash_grid

# 4 levels at resolutions 2, 4, 8, 16 with a 256-row table: (res+1)^3 = 27 and 125 fit (dense),
# 729 and 4913 do not (hashed)
SMALL = HashGridConfig(
    n_levels=4, n_features_per_level=2, log2_hashmap_size=8, base_resolution=2, per_level_scale=2.0, backend="torch"
)


def naive_encoding(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Instant-NGP written out with Python integers: no vectorisation, no int32 tricks."""
    table_size = 2**cfg.log2_hashmap_size
    out = torch.zeros(x.shape[0], cfg.n_levels * cfg.n_features_per_level, dtype=table.dtype)
    for p in range(x.shape[0]):
        offset = 0
        for level in range(cfg.n_levels):
            res = math.floor(cfg.base_resolution * cfg.per_level_scale**level)
            dense = (res + 1) ** 3 <= table_size
            position = [float(x[p, a]) * res for a in range(3)]
            cell = [min(max(math.floor(v), 0), res - 1) for v in position]
            frac = [position[a] - cell[a] for a in range(3)]
            for corner in itertools.product((0, 1), repeat=3):
                vx, vy, vz = (cell[a] + corner[a] for a in range(3))
                if dense:
                    index = vx + vy * (res + 1) + vz * (res + 1) ** 2
                else:
                    index = (vx ^ (vy * 2654435761) ^ (vz * 805459861)) % table_size
                weight = 1.0
                for a in range(3):
                    weight *= frac[a] if corner[a] else 1.0 - frac[a]
                for f in range(cfg.n_features_per_level):
                    out[p, level * cfg.n_features_per_level + f] += weight * table[f, offset + index]
            offset += (res + 1) ** 3 if dense else table_size
    return out


def test_levels_cover_dense_and_hashed_and_table_layout():
    grid = HashGrid(SMALL)
    assert [level.resolution for level in grid.levels] == [2, 4, 8, 16]
    assert [level.hashed for level in grid.levels] == [False, False, True, True]
    assert grid.table.shape == (2, 27 + 125 + 256 + 256)
    assert grid.out_dim == 8
    assert grid.table.abs().max() <= 1e-4


def test_matches_naive_reference_small_table():
    torch.manual_seed(0)
    grid = HashGrid(SMALL).double()
    with torch.no_grad():
        grid.table.uniform_(-1, 1)  # the 1e-4 init would make every comparison trivially close
    x = torch.rand(7, 3, dtype=torch.float64)
    x[0] = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)  # corners of the cube: clamped cells
    x[1] = torch.tensor([0.5, 0.25, 0.999], dtype=torch.float64)  # exactly on vertices
    expected = naive_encoding(x, grid.table.detach(), SMALL)
    torch.testing.assert_close(grid(x), expected, rtol=1e-12, atol=1e-12)


def test_matches_naive_reference_default_config_float32():
    # the recipe's grid: resolutions up to 4095, where int32 wrap-around in the hash matters most
    cfg = HashGridConfig(backend="torch")
    torch.manual_seed(1)
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.uniform_(-1, 1)
    x = torch.rand(4, 3)
    expected = naive_encoding(x.double(), grid.table.detach().double(), cfg).float()
    # float32 x * 4095 carries ~2.5e-4 cells of rounding; a wrong corner would be off by ~1
    torch.testing.assert_close(grid(x), expected, rtol=0, atol=2e-3)


def test_grad_wrt_table_finite_differences():
    torch.manual_seed(2)
    grid = HashGrid(SMALL).double()
    x = torch.rand(6, 3, dtype=torch.float64)
    probe = torch.randn(6, grid.out_dim, dtype=torch.float64)
    table = grid.table.detach().clone().uniform_(-1, 1)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return (hashgrid._HashGridLookup.apply(x, t, grid.levels, True) * probe).sum()

    t = table.clone().requires_grad_(True)
    loss(t).backward()
    numeric = torch.zeros_like(table)
    eps = 1e-6
    for f in range(table.shape[0]):
        for row in range(table.shape[1]):
            plus, minus = table.clone(), table.clone()
            plus[f, row] += eps
            minus[f, row] -= eps
            numeric[f, row] = (loss(plus) - loss(minus)) / (2 * eps)
    assert numeric.abs().sum() > 0
    torch.testing.assert_close(t.grad, numeric, rtol=1e-6, atol=1e-8)


def _points_away_from_cell_faces(n: int, finest_resolution: int, generator: torch.Generator) -> torch.Tensor:
    # fractional part in [0.2, 0.8] at the finest level keeps every coarser level (a power-of-two
    # divisor here) at least 0.1 cell away from a face, so +-eps never crosses a cell
    cells = torch.randint(0, finest_resolution, (n, 3), generator=generator)
    frac = 0.2 + 0.6 * torch.rand(n, 3, generator=generator)
    return ((cells + frac) / finest_resolution).double()


def test_grad_wrt_positions_finite_differences():
    generator = torch.Generator().manual_seed(3)
    grid = HashGrid(SMALL).double()
    with torch.no_grad():
        grid.table.uniform_(-1, 1)
    x = _points_away_from_cell_faces(5, 16, generator).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: grid(p), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_recomputed_corners_give_the_same_gradients(monkeypatch):
    torch.manual_seed(4)
    grid = HashGrid(SMALL).double()
    x = torch.rand(9, 3, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(9, grid.out_dim, dtype=torch.float64)
    (grid(x) * probe).sum().backward()
    kept = (x.grad.clone(), grid.table.grad.clone())
    x.grad = None
    grid.table.grad = None
    monkeypatch.setattr(hashgrid, "_KEEP_CORNERS_MAX_BYTES", 0)
    (grid(x) * probe).sum().backward()
    torch.testing.assert_close(x.grad, kept[0])
    torch.testing.assert_close(grid.table.grad, kept[1])


def test_no_grad_forward_equals_grad_forward():
    grid = HashGrid(SMALL)
    x = torch.rand(50, 3)
    with torch.no_grad():
        a = grid(x)
    b = grid(x)
    assert b.requires_grad
    torch.testing.assert_close(a, b.detach())


def test_backend_selection_without_tinycudann():
    try:
        import tinycudann  # noqa: F401

        has_tcnn = True
    except ImportError:
        has_tcnn = False
    torch_cfg = HashGridConfig(n_levels=2, log2_hashmap_size=8, backend="torch")
    assert isinstance(make_hash_grid(torch_cfg), HashGrid)
    if has_tcnn and torch.cuda.is_available():
        pytest.skip("tinycudann is present: the auto/tcnn fallbacks are not reachable here")
    auto_cfg = HashGridConfig(n_levels=2, log2_hashmap_size=8, backend="auto")
    assert isinstance(make_hash_grid(auto_cfg), HashGrid)
    with pytest.raises(RuntimeError, match="tcnn"):
        make_hash_grid(HashGridConfig(n_levels=2, log2_hashmap_size=8, backend="tcnn"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tiny-cuda-nn needs CUDA")
def test_tcnn_adapter_shapes():
    pytest.importorskip("tinycudann")
    cfg = HashGridConfig(backend="tcnn")
    grid = make_hash_grid(cfg)
    assert isinstance(grid, hashgrid.TcnnHashGrid)
    x = torch.rand(1000, 3, device="cuda")
    features = grid(x)
    assert features.shape == (1000, cfg.n_levels * cfg.n_features_per_level)
    assert features.dtype == torch.float32


TRITON_CHECK = r"""
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: run the kernels on the CPU
import torch
from prolificli.config import HashGridConfig
from prolificli.scene.hashgrid import HashGrid

results = {}
for name, cfg in {
    "dense and hashed": dict(n_levels=5, n_features_per_level=2, log2_hashmap_size=10, base_resolution=3, per_level_scale=2.1),
    "four features": dict(n_levels=3, n_features_per_level=4, log2_hashmap_size=9, base_resolution=6, per_level_scale=1.7),
}.items():
    torch.manual_seed(0)
    reference = HashGrid(HashGridConfig(**cfg, backend="torch"))
    kernels = HashGrid(HashGridConfig(**cfg, backend="triton"))
    with torch.no_grad():
        reference.table.normal_()
        kernels.table.copy_(reference.table)
    x = torch.rand(700, 3)
    x[:5] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0], [0.999999, 1e-7, 0.5]])
    weights = torch.randn(700, reference.out_dim)
    out = {}
    for label, grid in (("torch", reference), ("triton", kernels)):
        features = grid(x)
        (features * weights).sum().backward()
        out[label] = (features.detach(), grid.table.grad.clone())
    hashed = [lv.hashed for lv in reference.levels]
    results[name] = {
        "forward": float((out["triton"][0] - out["torch"][0]).abs().max() / out["torch"][0].abs().max()),
        "table_grad": float((out["triton"][1] - out["torch"][1]).abs().max() / out["torch"][1].abs().max()),
        "levels_hashed": [any(hashed), not all(hashed)],
    }
print(json.dumps(results))
"""


def test_triton_kernels_match_the_pytorch_grid_in_the_interpreter():
    """The Triton hash grid (forward and table gradient) against the pure-PyTorch one, run by
    Triton's CPU interpreter in a fresh process (TRITON_INTERPRET must be set before import)."""
    pytest.importorskip("triton")
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["dense and hashed"]["levels_hashed"] == [True, True]  # both kinds of level were checked
    for name, errors in results.items():
        assert errors["forward"] <= 1e-6, (name, errors)
        assert errors["table_grad"] <= 1e-5, (name, errors)
