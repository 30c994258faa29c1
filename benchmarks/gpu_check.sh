#!/usr/bin/env bash
# The GPU checks of issue 12, in one call on a lent GPU machine (under 8 minutes, no downloads):
#   1. nerf_step.py with sd21-random (SD 2.1-base's UNet + VAE, random weights) in fp16 at 64 and
#      512 px, VSD and L2-VSD, a few steps each, with the prior side's FLOPs;
#   2. the toy recipe's NeRF stage for 200 steps on CUDA (wall time, s/step, samples per ray);
#   3. the tinycudann and nvdiffrast adapters' tests, only if those modules import.
# Writes $OUT/gpu_check.json (or benchmarks/results/gpu_check.json) and prints one table.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu     # dry run of the logic here: tiny model, 32 px, 5 steps
#
# The GPU machine has torch but not diffusers (and a few other pure-Python packages): fetch their
# wheels here first, `bash benchmarks/gpu_check.sh --fetch-wheels` (into .whl/, git-ignored), and
# name .whl in the device tool's carry; the script installs them from there when present.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
case "${1:-}" in
  --device) DEVICE="$2" ;;
  --fetch-wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for pkg in diffusers==0.42.1 trimesh==4.8.3 imageio-ffmpeg==0.6.0; do
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$pkg" || exit 1
    done
    exit 0 ;;
esac
OUTDIR="${OUT:-benchmarks/results}"
mkdir -p "$OUTDIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d)

if [ "$DEVICE" = cpu ]; then  # the dry run: the logic, not the figures (a CPU is far slower)
  MODEL=tiny; RESOLUTIONS="32 64"; STEPS=2; TOY_STEPS=5; LIMIT=900
else  # 2 x 150 s + 150 s + the adapter tests: under 8 minutes
  MODEL=sd21-random; RESOLUTIONS="64 512"; STEPS=5; TOY_STEPS=200; LIMIT=150
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# 1. the prior-side step at 64 and 512 px, VSD and L2-VSD
for method in vsd l2vsd; do
  timeout "$LIMIT" python3 benchmarks/nerf_step.py --model "$MODEL" --device "$DEVICE" --method "$method" \
    --resolutions $RESOLUTIONS --steps "$STEPS" --warmup 2 --flops --out "$WORK/step-$method.json" \
    || echo "nerf_step $method failed (exit $?)"
done

# 2. the toy recipe's NeRF stage on the device
tic=$(date +%s.%N)
timeout "$LIMIT" python3 -m prolificli.cli nerf "a red cube" --recipe toy --out "$WORK/toy" \
  --set nerf.steps="$TOY_STEPS" --set prior.device="$DEVICE" --set nerf.preview_every=1000 >/dev/null
toy_rc=$?
toy_seconds=$(python3 -c "import time; print(round(time.time() - $tic, 1))")

# 3. the optional CUDA backends' adapter tests (they skip themselves when the module is absent)
adapters=""
for module in tinycudann nvdiffrast; do
  if python3 -c "import $module" 2>/dev/null; then
    timeout 120 python3 -m pytest -q -k "$module or tcnn" tests/test_hashgrid.py tests/test_raster.py >"$WORK/$module.log" 2>&1
    adapters="$adapters $module:$?"
  else
    adapters="$adapters $module:absent"
  fi
done

python3 - "$WORK" "$OUTDIR/gpu_check.json" "$toy_rc" "$toy_seconds" "$adapters" "$DEVICE" <<'PY'
import json, sys
from pathlib import Path
work, out, toy_rc, toy_seconds, adapters, device = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5].split(), sys.argv[6]
report = {"device": device, "steps": {}, "toy": {"exit": toy_rc, "wall_seconds": toy_seconds}, "adapters": dict(a.split(":") for a in adapters)}
for method in ("vsd", "l2vsd"):
    path = work / f"step-{method}.json"
    report["steps"][method] = json.loads(path.read_text())["rows"] if path.exists() else []
metrics = work / "toy" / "nerf" / "metrics.jsonl"
if metrics.exists():
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    seconds = sorted(line["step_seconds"] for line in lines)
    report["toy"].update(steps=lines[-1]["step"] if lines else 0, median_step_seconds=seconds[len(seconds) // 2],
                         samples_per_ray_last=lines[-1].get("samples_per_ray"))
print(f"\n{'check':<28} | {'res':>4} | {'s/step':>7} | {'peak MiB':>9} | {'TFLOP':>6} | {'x floor':>7} | samples/ray")
for method, rows in report["steps"].items():
    if not rows:
        print(f"{method + ' step':<28} | failed")
    for row in rows:
        if "error" in row:
            print(f"{method + ' step':<28} | {row['resolution']:>4} | failed: {row['error']}")
            continue
        flops = row.get("prior_side_flops")
        print(f"{method + ' step (' + row['model'] + ')':<28} | {row['resolution']:>4} | {row['seconds_per_step_median']:>7.3f} | "
              f"{row['peak_memory_mib']:>9.0f} | {flops / 1e12 if flops else float('nan'):>6.2f} | "
              f"{row.get('step_over_floor', float('nan')):>7.1f} | {row['samples_per_ray']:.1f}")
for method in ("vsd", "l2vsd"):
    rows = {r["resolution"]: r for r in report["steps"].get(method, []) if "error" not in r}
    report.setdefault("largest", {})[method] = max(rows) if rows else None
vsd = {r["resolution"]: r for r in report["steps"].get("vsd", []) if "error" not in r}
l2 = {r["resolution"]: r for r in report["steps"].get("l2vsd", []) if "error" not in r}
for res in sorted(set(vsd) & set(l2)):
    ratio = l2[res]["seconds_per_step_median"] / vsd[res]["seconds_per_step_median"]
    report.setdefault("l2vsd_over_vsd", {})[str(res)] = ratio
    print(f"{'l2vsd / vsd':<28} | {res:>4} | {ratio:>7.2f}x")
toy = report["toy"]
print(f"{'toy nerf stage':<28} | {'32':>4} | {toy.get('median_step_seconds', float('nan')):>7.3f} | exit {toy['exit']}, "
      f"{toy['wall_seconds']} s for {toy.get('steps', 0)} steps, samples/ray {toy.get('samples_per_ray_last')}")
print(f"{'adapters':<28} | {' '.join(adapters)}")
out.write_text(json.dumps(report, indent=2))
print(f"wrote {out}")
PY
