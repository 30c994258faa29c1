#!/usr/bin/env bash
# The README's offline quick start in one command, on a fresh machine: a virtual environment
# (.venv-demo, beside this checkout's src/), the CPU build of torch, this package from a wheel,
# then the whole pipeline in the toy world: nerf, extract | geometry | texture, render, eval.
# About 10 minutes on 2 CPU cores. Outputs go to OUT (default: ./demo-runs), which it prints.
#
#   bash tools/demo.sh [OUT]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-demo-runs}" && cd "${1:-demo-runs}" && pwd)"
venv="$repo/.venv-demo"
if [ ! -x "$venv/bin/prolific" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet torch==2.13.0   # first: the CPU build, not CUDA wheels
    "$venv/bin/python" -m pip install --quiet "$repo"         # a wheel, as a user installs it
fi
export PATH="$venv/bin:$PATH"
cd "$out"
prolific nerf "a red cube" --recipe toy
prolific extract runs/a-red-cube | prolific geometry | prolific texture
prolific render runs/a-red-cube --resolution 64
prolific eval runs/a-red-cube --stage nerf --clip --fid --geometry --clip-model toy --resolution 64
echo "done: $out/runs/a-red-cube (texture/model.glb, render/texture/turntable.mp4, eval-report.html)"
