"""Every Triton kernel of the package compiles to a cubin for sm_80 and sm_90 without a GPU
(tests/compile_triton_kernels.py, in a process of its own: test_hashgrid turns on Triton's
interpreter for this one), and a kernel with a type error fails that check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compile_triton_kernels import SIGNATURES

SCRIPT = Path(__file__).resolve().parent / "compile_triton_kernels.py"
KERNELS = Path(__file__).resolve().parents[1] / "src" / "prolificli" / "scene" / "hashgrid_triton.py"


def compile_kernels(*args: str) -> tuple[int, list[dict], str]:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, rows, done.stderr


def test_every_kernel_compiles_for_sm80_and_sm90() -> None:
    code, rows, stderr = compile_kernels("--arch", "80", "90")
    assert code == 0, [row for row in rows if not row["ok"]] or stderr
    assert {row["kernel"] for row in rows} == set(SIGNATURES)
    expected = sum(len(variants) for variants in SIGNATURES.values()) * 2
    assert len(rows) == expected and all(row["ok"] and row["cubin_bytes"] > 0 for row in rows)
    assert {row["arch"] for row in rows} == {"sm_80", "sm_90"}


def test_a_type_error_in_a_kernel_fails_the_check(tmp_path: Path) -> None:
    source = KERNELS.read_text()
    good = "row = tl.where(hashed != 0, hashed_row.to(tl.int32), dense_row)"
    assert good in source
    broken = tmp_path / "hashgrid_triton.py"  # the row index becomes a float: no pointer offset takes it
    broken.write_text(source.replace(good, "row = tl.where(hashed != 0, hashed_row.to(tl.int32), dense_row * 0.5)"))
    code, rows, _ = compile_kernels("--arch", "90", "--replace", f"prolificli.scene.hashgrid_triton={broken}")
    assert code == 1
    assert rows and all(not row["ok"] for row in rows), rows
    assert all("CompilationError" in row["error"] or "Error" in row["error"] for row in rows)
