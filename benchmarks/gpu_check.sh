#!/usr/bin/env bash
# The GPU checks, in one call on a lent GPU machine (under 9 minutes, no downloads; gsplat, when
# carried, compiles its CUDA code at first use and adds a few):
#   1. nerf_step.py with sd21-random (SD 2.1-base's UNet + VAE, random weights) in fp16 at 64 and
#      512 px, VSD and L2-VSD, a few steps each, with the prior side's FLOPs;
#   2. the toy recipe's NeRF stage for 200 steps on CUDA (wall time, s/step, samples per ray; the
#      hash grid's Triton kernels run there);
#   3. the tinycudann and nvdiffrast adapters' tests, only if those modules import;
#   4. a VSD step on a Gaussian-splat particle of 100k splats at 512 px (the torch rasterizer), and
#      the gsplat backend's agreement test if gsplat imports.
# Writes $OUT/gpu_check.json (or benchmarks/results/gpu_check.json) whatever fails, prints one
# table and a FAILED line per part that failed, and exits 1 if any did.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu     # dry run of the logic here: tiny model, 32 px, 5 steps
#
# The GPU machine has torch, transformers, peft, accelerate and safetensors but not diffusers,
# trimesh or imageio-ffmpeg, which the checks import: fetch their wheels here first,
# `bash benchmarks/gpu_check.sh --fetch-wheels` (into .whl/, git-ignored), and name .whl in the
# device tool's carry; the script installs them from there when present. The dry run in a venv
# that holds only what the GPU image has checks that this list is enough.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
# what the checks import that the GPU image lacks (diffusers' own needs are all in the image)
WHEELS="diffusers==0.42.1 trimesh==4.8.3 imageio-ffmpeg==0.6.0"
case "${1:-}" in
  --device) DEVICE="$2" ;;
  --fetch-wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for pkg in $WHEELS; do
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$pkg" || exit 1
    done
    exit 0 ;;
esac
OUTDIR="${OUT:-benchmarks/results}"
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
: > "$WORK/failed.txt"
failed() {  # failed PART WHY: recorded for the JSON, and said at once
  echo "$1: $2" >> "$WORK/failed.txt"
  echo "FAILED $1: $2" >&2
}
last_line() { grep -v '^\s*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-300; }
why() {  # why EXIT LOG LIMIT
  if [ "$1" = 124 ]; then echo "timed out after $3 s"; else echo "exit $1: $(last_line "$2")"; fi
}

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$WORK/wheels.log" 2>&1 || failed wheels "pip install from .whl: $(last_line "$WORK/wheels.log")"
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

if [ "$DEVICE" = cpu ]; then  # the dry run: the logic, not the figures (a CPU is far slower)
  MODEL=tiny; RESOLUTIONS="32 64"; STEPS=2; TOY_STEPS=5; LIMIT=900
else  # 2 x 150 s + 150 s + the adapter tests + the splat step: under 9 minutes
  MODEL=sd21-random; RESOLUTIONS="64 512"; STEPS=5; TOY_STEPS=200; LIMIT=150
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# 1. the prior-side step at 64 and 512 px, VSD and L2-VSD
for method in vsd l2vsd; do
  timeout "$LIMIT" python3 benchmarks/nerf_step.py --model "$MODEL" --device "$DEVICE" --method "$method" \
    --resolutions $RESOLUTIONS --steps "$STEPS" --warmup 2 --flops --out "$WORK/step-$method.json" \
    2> >(tee "$WORK/step-$method.log" >&2)
  rc=$?
  [ $rc = 0 ] || failed "nerf_step $method" "$(why $rc "$WORK/step-$method.log" "$LIMIT")"
done

# 2. the toy recipe's NeRF stage on the device
tic=$(date +%s.%N)
timeout "$LIMIT" python3 -m prolificli.cli nerf "a red cube" --recipe toy --out "$WORK/toy" \
  --set nerf.steps="$TOY_STEPS" --set prior.device="$DEVICE" --set nerf.preview_every=1000 \
  >/dev/null 2>"$WORK/toy.log"
toy_rc=$?
toy_seconds=$(python3 -c "import time; print(round(time.time() - $tic, 1))")
[ $toy_rc = 0 ] || failed "toy nerf stage" "$(why $toy_rc "$WORK/toy.log" "$LIMIT")"

# 3. the optional CUDA backends' adapter tests (they skip themselves when the module is absent)
adapters=""
for module in tinycudann nvdiffrast; do
  if python3 -c "import $module" 2>/dev/null; then
    timeout 120 python3 -m pytest -q -k "$module or tcnn" tests/test_hashgrid.py tests/test_raster.py >"$WORK/$module.log" 2>&1
    rc=$?
    adapters="$adapters $module:$rc"
    [ $rc = 0 ] || failed "$module adapter tests" "$(why $rc "$WORK/$module.log" 120)"
  else
    adapters="$adapters $module:absent"
  fi
done

# 4. Gaussian splats at 512 px (the NeRF's 512 px step is part 1's)
timeout "$LIMIT" python3 benchmarks/nerf_step.py --model "$MODEL" --device "$DEVICE" --method vsd \
  --resolutions ${RESOLUTIONS##* } --gaussians 100000 --skip-nerf --steps "$STEPS" --warmup 2 \
  --out "$WORK/step-splats.json" 2> >(tee "$WORK/step-splats.log" >&2)
rc=$?
[ $rc = 0 ] || failed "nerf_step splats" "$(why $rc "$WORK/step-splats.log" "$LIMIT")"
if python3 -c "import gsplat" 2>/dev/null; then
  timeout 300 python3 -m pytest -q -k gsplat tests/test_splat.py >"$WORK/gsplat.log" 2>&1
  rc=$?
  adapters="$adapters gsplat:$rc"
  [ $rc = 0 ] || failed "gsplat agreement test" "$(why $rc "$WORK/gsplat.log" 300)"
else
  adapters="$adapters gsplat:absent"
fi

python3 - "$WORK" "$OUTDIR/gpu_check.json" "$toy_rc" "$toy_seconds" "$adapters" "$DEVICE" <<'PY'
"""The report: gpu_check.json first (whatever else fails), then the table and what failed."""
import json, sys
from pathlib import Path
work, out, toy_rc, toy_seconds, adapters, device = (Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]),
                                                    float(sys.argv[4]), sys.argv[5].split(), sys.argv[6])
failures = [line for line in (work / "failed.txt").read_text().splitlines() if line]
report = {"device": device, "steps": {}, "toy": {"exit": toy_rc, "wall_seconds": toy_seconds},
          "adapters": dict(a.split(":") for a in adapters), "failures": failures}
for method in ("vsd", "l2vsd", "splats"):
    path = work / f"step-{method}.json"
    try:
        report["steps"][method] = json.loads(path.read_text())["rows"] if path.exists() else []
    except (OSError, ValueError, KeyError) as exc:
        report["steps"][method] = []
        failures.append(f"nerf_step {method}: unreadable results ({exc})")
    failures += [f"nerf_step {method} at {row['resolution']} px: {row['error']}"
                 for row in report["steps"][method] if "error" in row]
metrics = work / "toy" / "nerf" / "metrics.jsonl"
try:
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    if lines:
        seconds = sorted(line["step_seconds"] for line in lines)
        report["toy"].update(steps=lines[-1]["step"], median_step_seconds=seconds[len(seconds) // 2],
                             samples_per_ray_last=lines[-1].get("samples_per_ray"))
except (OSError, ValueError, KeyError) as exc:
    failures.append(f"toy nerf stage: unreadable metrics ({exc})")
ok = {m: {r["resolution"]: r for r in rows if "error" not in r} for m, rows in report["steps"].items()
      if m != "splats"}
report["largest"] = {m: max(rows) if rows else None for m, rows in ok.items()}
report["l2vsd_over_vsd"] = {str(res): ok["l2vsd"][res]["seconds_per_step_median"] / ok["vsd"][res]["seconds_per_step_median"]
                            for res in sorted(set(ok.get("vsd", {})) & set(ok.get("l2vsd", {})))}
out.write_text(json.dumps(report, indent=2))

print(f"\n{'check':<28} | {'res':>4} | {'s/step':>7} | {'peak MiB':>9} | {'TFLOP':>6} | {'x floor':>7} | samples/ray")
for method, rows in report["steps"].items():
    if not rows:
        print(f"{method + ' step':<28} | failed")
    for row in rows:
        if "error" in row:
            print(f"{method + ' step':<28} | {row['resolution']:>4} | failed: {row['error']}")
            continue
        flops = row.get("prior_side_flops")
        name = f"{row['gaussians'] // 1000}k splats" if row.get("gaussians") else method
        print(f"{name + ' step (' + row['model'] + ', ' + row.get('dtype', '?') + ')':<28} | {row['resolution']:>4} | "
              f"{row['seconds_per_step_median']:>7.3f} | {row['peak_memory_mib']:>9.0f} | "
              f"{flops / 1e12 if flops else float('nan'):>6.2f} | {row.get('step_over_floor', float('nan')):>7.1f} | "
              f"{row['samples_per_ray']:.1f}")
for res, ratio in report["l2vsd_over_vsd"].items():
    print(f"{'l2vsd / vsd':<28} | {res:>4} | {ratio:>7.2f}x")
toy = report["toy"]
print(f"{'toy nerf stage':<28} | {'32':>4} | {toy.get('median_step_seconds', float('nan')):>7.3f} | exit {toy['exit']}, "
      f"{toy['wall_seconds']} s for {toy.get('steps', 0)} steps, samples/ray {toy.get('samples_per_ray_last')}")
print(f"{'adapters':<28} | {' '.join(adapters)}")
for line in failures:
    print(f"FAILED {line}")
print(f"wrote {out}" + (f" ({len(failures)} part(s) failed)" if failures else ", every part ran"))
sys.exit(1 if failures else 0)
PY
