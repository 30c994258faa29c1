"""Compile every Triton kernel of the package for NVIDIA GPUs ahead of time, without a GPU.

Triton lowers a kernel to PTX and assembles it with the ptxas bundled in its wheel, for any
target: `triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))`.
This checks that each kernel compiles for each architecture (sm_80: A100, sm_90: H100/H200) at the
signatures the package launches it with; it checks neither results nor speed.

A kernel is a `triton.jit` function that its module launches (`name[grid](...)`); the jit
functions those call are compiled inside them. A launched kernel without a row in SIGNATURES is
a failure, so a new kernel cannot go unchecked.

    python tests/compile_triton_kernels.py [--arch 80 90] [--replace MODULE=FILE]

Prints one JSON line per compilation and exits 1 if any failed. Run it without TRITON_INTERPRET
(under the interpreter `triton.jit` makes no compilable function). --replace loads MODULE from
FILE instead (the test uses it to show that a broken kernel fails).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prolificli"

# the hash grid's lookup (scene/hashgrid_triton.py): points [N,3] fp32, the table [F, rows] fp32,
# per-level int32 columns; F is n_features_per_level (the recipes use 2), BLOCK the module's
_LEVELS = {"x_ptr": "*fp32", "res_ptr": "*i32", "offset_ptr": "*i32", "size_ptr": "*i32", "hashed_ptr": "*i32",
           "n": "i32", "rows": "i32", "n_levels": "i32", "F": "constexpr", "BLOCK": "constexpr"}
SIGNATURES = {
    "prolificli.scene.hashgrid_triton._forward_kernel":
        [({**_LEVELS, "table_ptr": "*fp32", "out_ptr": "*fp32"}, {"F": f}) for f in (2, 4)],
    "prolificli.scene.hashgrid_triton._backward_kernel":
        [({**_LEVELS, "grad_out_ptr": "*fp32", "grad_table_ptr": "*fp32"}, {"F": f}) for f in (2, 4)],
}


def triton_modules() -> list[str]:
    """The package's modules that import triton."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if re.search(r"^\s*import triton\b|^\s*from triton\b", path.read_text(), re.M):
            names.append(".".join(("prolificli", *path.relative_to(PACKAGE).with_suffix("").parts)))
    return names


def load(name: str, replacements: dict[str, Path]):
    if name not in replacements:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, replacements[name])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def launched_kernels(module) -> dict[str, object]:
    """{qualified name: JITFunction} of the jit functions the module launches with name[grid]."""
    from triton.runtime.jit import JITFunction

    source = Path(module.__file__).read_text()
    return {f"{module.__name__}.{name}": value for name, value in vars(module).items()
            if isinstance(value, JITFunction) and re.search(rf"\b{re.escape(name)}\[", source)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="CUDA compute capabilities")
    parser.add_argument("--replace", action="append", default=[], metavar="MODULE=FILE")
    args = parser.parse_args()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    replacements = {name: Path(file) for name, file in (r.split("=", 1) for r in args.replace)}
    failed, found = 0, set()
    for module_name in triton_modules():
        module = load(module_name, replacements)
        for name, kernel in launched_kernels(module).items():
            found.add(name)
            if name not in SIGNATURES:
                print(json.dumps({"kernel": name, "ok": False, "error": "no signature in SIGNATURES"}))
                failed += 1
                continue
            for signature, constexprs in SIGNATURES[name]:
                constexprs = {"BLOCK": getattr(module, "BLOCK", None), **constexprs} if "BLOCK" in signature \
                    else constexprs
                for arch in args.arch:
                    row = {"kernel": name, "arch": f"sm_{arch}", "constexprs": constexprs, "triton": triton.__version__}
                    try:
                        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs),
                                                  target=GPUTarget("cuda", arch, 32))
                        row.update(ok=True, ptx_chars=len(compiled.asm["ptx"]), cubin_bytes=len(compiled.asm["cubin"]))
                    except Exception as exc:  # any compile error is this kernel's failure, reported and counted
                        lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
                        # Triton's first line says where, its last what
                        row.update(ok=False, error=f"{type(exc).__name__}: {lines[0].strip()} {lines[-1].strip()}",
                                   detail="\n".join(lines)[-2000:])
                        failed += 1
                    print(json.dumps(row), flush=True)
    for name in sorted(set(SIGNATURES) - found):
        print(json.dumps({"kernel": name, "ok": False, "error": "in SIGNATURES but no longer launched by the package"}))
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
