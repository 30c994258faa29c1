"""The L2-VSD paper's 2D Gaussian example (Sec. 3.2, App. A): how far each method's q_theta ends
from the target p, with every score in closed form (prolificli.toyworld.gaussian).

    python benchmarks/gaussian.py                 # both regimes, 6 seeds (~10 min on 2 CPU cores)
    python benchmarks/gaussian.py --seeds 2 --regimes fast

Methods (all through the library's own SDS / VSD / LVSD / L2VSD classes and optimization_step):
  sds                 eps_r = the drawn noise: mode seeking, q's covariance collapses
  vsd, exact q        r is q_theta itself, read off theta every step: no lag, no fitting error
  vsd                 r fitted to the samples by the diffusion loss, one step behind theta
  l-vsd               r updated on the current samples first (gamma = 1)
  l-vsd, gamma=20     r overfitted to the current samples (20 updates) before scoring
  l2vsd, eta=E        VSD plus the linear term of r's SGD lookahead -E * Delta
Regimes:
  paper  4 samples per step (App. A), theta lr 0.01 with cosine decay, r lr 0.02, 2000 steps
  fast   16 samples per step, constant theta lr 0.05, r lr 0.1, 1000 steps: the lag is a larger
         fraction of each step
Per method the mean over seeds of |m - mu_p| and ||A A^T - S_p||_F at the end, and averaged over
the second half of the run. Writes benchmarks/results/gaussian.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REGIMES = {
    "paper": dict(steps=2000, batch=4, noise_draws=16, score_lr=0.02, lr=0.01, cosine_decay=True),
    "fast": dict(steps=1000, batch=16, noise_draws=16, score_lr=0.1, lr=0.05, cosine_decay=False),
}
METHODS = ["sds", "vsd, exact q", "vsd", "l-vsd", "l-vsd, gamma=20"]
# L2-VSD's SGD lookahead -eta * Delta: at eta = r's own learning rate it is far shorter than r's
# actual AdamW step (|Delta| << 1 here), so larger eta too
L2VSD_ETAS = {"paper": [0.02, 1.0, 5.0], "fast": [0.1, 1.0, 5.0]}


def measure(method: str, regime: dict, seeds: int) -> dict:
    from prolificli.toyworld.gaussian import Setting, run

    final, tail = [], []
    tic = time.perf_counter()
    for seed in range(seeds):
        setting = Setting(seed=seed, **regime)
        end, trajectory = run(method, setting, record_every=10)
        second_half = [d for step, d in trajectory if step > setting.steps // 2]
        final.append(end)
        tail.append((statistics.mean(d.mean for d in second_half), statistics.mean(d.cov for d in second_half)))
    return {"method": method, "final_mean": statistics.mean(d.mean for d in final),
            "final_cov": statistics.mean(d.cov for d in final),
            "half_mean": statistics.mean(m for m, _ in tail), "half_cov": statistics.mean(c for _, c in tail),
            "per_seed_final": [asdict(d) for d in final], "seconds": round(time.perf_counter() - tic, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args()
    from prolificli.toyworld.gaussian import TARGET_COV, TARGET_MU

    results = {"target": {"mu": TARGET_MU.tolist(), "cov": TARGET_COV.tolist()}, "seeds": args.seeds}
    for name in args.regimes:
        regime = REGIMES[name]
        rows = []
        print(f"\nregime '{name}': {regime}, {args.seeds} seeds; q starts 5 away with covariance 0.25 I "
              f"(|S_p|_F = {float(TARGET_COV.norm()):.2f})")
        print(f"{'method':<18} | {'final |dm|':>10} | {'final |dS|':>10} | {'2nd half |dm|':>13} | "
              f"{'2nd half |dS|':>13} | {'s':>5}")
        for method in METHODS + [f"l2vsd, eta={eta}" for eta in L2VSD_ETAS[name]]:
            row = measure(method, regime, args.seeds)
            rows.append(row)
            print(f"{method:<18} | {row['final_mean']:>10.3f} | {row['final_cov']:>10.3f} | {row['half_mean']:>13.3f} | "
                  f"{row['half_cov']:>13.3f} | {row['seconds']:>5.0f}", flush=True)
        results[name] = {"setting": regime, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "gaussian.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
