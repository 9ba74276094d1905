"""Benchmark: the stability edge alpha* by root locus vs companion matrix, tau in {64, 256, 1024}.

    .venv/bin/python benchmarks/theory.py [--repeats 20] [--companion-max-tau 1024]

For each (variant, tau) both methods run in the same process; the JSON records milliseconds per
call (best of the repeats), the speed-up, and the relative difference of the two alpha*. Writes
benchmarks/results/theory.json atomically.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy

from delay_stability import __version__, theory

OUT = Path(__file__).resolve().parent / "results" / "theory.json"
TAUS = (64, 256, 1024)
CASES = (  # (name, variant, momentum, delay(tau))
    ("plain", "plain", 0.0, lambda tau: tau),
    ("momentum", "momentum", 0.9, lambda tau: tau),
    ("shifted", "shifted", 0.9, lambda tau: tau),
    ("plain, unif{0..tau}", "plain", 0.0, lambda tau: theory.uniform_delay(0, tau)),
)


def best_ms(fn, repeats):
    """Best wall time of ``repeats`` calls, in milliseconds, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best, result


def bench_case(name, variant, m, delay, tau, repeats, companion_max_tau):
    locus_ms, alpha = best_ms(lambda: theory.critical_alpha(delay, m, variant), repeats)
    row = {"case": name, "variant": variant, "momentum": m, "tau": tau, "alpha_star": alpha,
           "locus_ms": locus_ms}
    if tau <= companion_max_tau:
        reps = max(1, repeats // 10) if tau <= 256 else 1
        companion_ms, alpha_c = best_ms(lambda: theory.critical_alpha(delay, m, variant, method="companion"), reps)
        radius_ms, radius = best_ms(lambda: theory.spectral_radius(alpha, delay, m, variant), reps)
        row.update(companion_ms=companion_ms, speedup=companion_ms / locus_ms,
                   rel_diff=abs(alpha_c - alpha) / alpha, spectral_radius_ms=radius_ms,
                   spectral_radius_minus_1=radius - 1.0)
    return row


def write_json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="calls per timing of the root locus")
    parser.add_argument("--companion-max-tau", type=int, default=1024,
                        help="skip the O(tau^3) companion baseline above this tau")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    rows = []
    print(f"{'case':22s} {'tau':>5s} {'locus ms':>9s} {'companion ms':>13s} {'speed-up':>9s} {'rel diff':>9s}")
    for tau in TAUS:
        for name, variant, m, make_delay in CASES:
            row = bench_case(name, variant, m, make_delay(tau), tau, args.repeats, args.companion_max_tau)
            rows.append(row)
            print(f"{name:22s} {tau:5d} {row['locus_ms']:9.2f} {row.get('companion_ms', float('nan')):13.1f} "
                  f"{row.get('speedup', float('nan')):9.0f} {row.get('rel_diff', float('nan')):9.1e}")
    payload = {
        "benchmark": "critical_alpha: root locus (FFT scan + brentq) vs companion-matrix eigenvalues",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count()},
        "goal": "under 50 ms per call at tau = 1024",
        "repeats": args.repeats,
        "rows": rows,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
