"""Benchmark of delay_stability.sharpness -> benchmarks/results/sharpness.json.

For each case (model, data, BatchNorm mode):
1. HVP time / gradient time on the same data and batches, for both HVP backends (double backward
   "autograd" and forward-over-reverse "func"), with the two HVPs cross-checked against each other;
2. Lanczos vs power iteration from the same start vector, one run each with the common stopping
   rule (relative change < 1e-3): the HVPs after which it fires, the relative error there, and the
   HVPs after which θ first is within 1e-3 of the reference λmax (Lanczos, residual ≤ 1e-5 |θ|).

Cases: on the CPU, the quick scale (digits MLP, digits CNN with BatchNorm, both trained briefly
towards a minimum) and a VGG-11-like CNN (VGG-11's layers at an eighth of its width, BatchNorm) on
256 CIFAR-shaped inputs; with CUDA, VGG-11 with BatchNorm on 5,000 CIFAR-shaped inputs at batch
1024. Run: ``python benchmarks/sharpness.py [--cpu-only] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from delay_stability import models
from delay_stability import sharpness as S

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sharpness.json")
CHANGE_TOL = 1e-3  # the common stopping rule: |θ_k − θ_{k−1}| ≤ 1e-3 |θ_k|
REFERENCE_TOL = 1e-5  # reference λmax: Lanczos, ‖Hy − θy‖ ≤ 1e-5 |θ|


# ---------------------------------------------------------------- cases


def digits_data(device):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    return x.to(device), torch.tensor(d.target).to(device)


def cifar_shaped(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def vgg11_like(width_divisor):
    """models.vgg11's layer sequence (8 conv3 + BN + ReLU, 5 max-pools, fc) at 1/width_divisor
    of its channels."""
    layers, cin = [], 3
    for v in models.VGG11_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        cout = v // width_divisor
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin, 10))


def train_briefly(model, x, y, steps, lr, batch_size):
    """Plain SGD towards a minimum (the theory's λmax is taken at a minimum)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randperm(len(x), generator=g)[:batch_size].to(x.device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[pick]), y[pick]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def cpu_cases():
    device = torch.device("cpu")
    x, y = digits_data(device)
    torch.manual_seed(0)
    mlp = models.build_model("mlp", hidden=(64,))
    mlp_loss = train_briefly(mlp, x, y, steps=400, lr=0.5, batch_size=len(x))
    torch.manual_seed(0)
    cnn = models.build_model("cnn_digits", batchnorm=True)
    cnn_loss = train_briefly(cnn, x, y, steps=300, lr=0.1, batch_size=128)
    torch.manual_seed(0)
    vgg = vgg11_like(8)
    xc, yc = cifar_shaped(256, device)
    return [
        dict(name="digits-mlp", model=mlp, x=x, y=y, batch_size=len(x), bn_mode="train",
             state=f"400 full-batch GD steps, train loss {mlp_loss:.4f}"),
        dict(name="digits-cnn-bn", model=cnn, x=x, y=y, batch_size=128, bn_mode="train",
             state=f"300 SGD steps at batch 128, train loss {cnn_loss:.4f}"),
        dict(name="vgg11-eighth-width-bn-cifar256", model=vgg, x=xc, y=yc, batch_size=128,
             bn_mode="train", state="random init, random labels", power_budget=200),
    ]


def cuda_cases():
    device = torch.device("cuda")
    torch.manual_seed(0)
    vgg = models.build_model("vgg11", batchnorm=True).to(device)
    xc, yc = cifar_shaped(5000, device)
    return [dict(name="vgg11-bn-cifar5000", model=vgg, x=xc, y=yc, batch_size=1024,
                 bn_mode="train", state="random init, random labels")]


# ---------------------------------------------------------------- measurements


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats):
    fn()  # warm-up (allocator, cuDNN autotuning, lazy init)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_gradient_and_hvps(case, repeats):
    """Seconds for one gradient and one HVP of the mean loss over the same batches."""
    model, batches = case["model"], case["batches"]
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(len(x) for x, _ in batches)

    def gradient():
        out = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
            for o, g in zip(out, grads):
                o.add_(g, alpha=len(x) / n)
        return out

    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(0))
    v = (v / v.norm()).to(device)
    row, hv = {}, {}
    with S.hessian_mode(model, case["bn_mode"]):
        row["gradient_s"] = median_seconds(gradient, device, repeats)
        for backend in ("autograd", "func"):
            op = S.HessianOperator(model, F.cross_entropy, batches, backend)
            row[f"hvp_{backend}_s"] = median_seconds(lambda: op(v), device, repeats)
            row[f"hvp_{backend}_over_gradient"] = row[f"hvp_{backend}_s"] / row["gradient_s"]
            hv[backend] = op(v)
        auto = S.HessianOperator(model, F.cross_entropy, batches, "auto")
        auto(v)
        row["auto_backend"] = auto.backend
    diff = torch.linalg.vector_norm(hv["func"] - hv["autograd"]) / torch.linalg.vector_norm(hv["autograd"])
    row["backends_relative_difference"] = diff.item()
    return row


def first_within(history, reference, rtol):
    """1-based index of the first θ_k with |θ_k − λ| ≤ rtol·|λ| (None if never)."""
    for k, theta in enumerate(history, start=1):
        if abs(theta - reference) <= rtol * abs(reference):
            return k
    return None


def change_rule_stop(history, rtol):
    """1-based index at which the rule |θ_k − θ_{k−1}| ≤ rtol·|θ_k| first fires (None if never)."""
    for k in range(1, len(history)):
        if abs(history[k] - history[k - 1]) <= rtol * abs(history[k]):
            return k + 1
    return None


def solver_row(res, reference):
    """Where the change rule stops (HVPs, relative error there; ``converged`` False when the budget
    ran out first) and after how many HVPs θ first came within 1e-3 of the reference λmax."""
    if res.stop == "residual":  # the reference run: the change-rule run is a prefix of it
        stop = change_rule_stop(res.history, CHANGE_TOL)
        converged = stop is not None
        history = res.history[:stop] if stop else res.history
    else:
        stop, converged, history = res.hvps, res.converged, res.history
    theta = history[-1]
    return {
        "hvps_change_rule": stop,
        "converged": converged,
        "eigenvalue": theta,
        "relative_error_at_stop": abs(theta - reference) / abs(reference),
        "hvps_to_1e-3_accuracy": first_within(history, reference, 1e-3),
        "seconds_per_hvp": res.seconds / res.hvps,
    }


def compare_solvers(case, power_budget):
    """Lanczos vs power from the same start vector, each with the change rule (< 1e-3).

    Lanczos runs once, to the reference accuracy (residual ≤ 1e-5 |θ|); being deterministic, a
    run with the change rule is a prefix of this one, so its stopping point is read off the
    history. Power runs with the change rule (shifted if it lands on a negative eigenvalue), at
    most ``power_budget`` HVPs.
    """
    model, batches = case["model"], case["batches"]
    common = dict(bn_mode=case["bn_mode"], generator=None)
    ref = S.top_eigenvalue(model, F.cross_entropy, batches, tol=REFERENCE_TOL, max_iter=200,
                           **common)
    power = S.top_eigenvalue(model, F.cross_entropy, batches, method="power", stop="change",
                             tol=CHANGE_TOL, max_iter=power_budget, **common)
    return {"reference_eigenvalue": ref.eigenvalue, "reference_hvps": ref.hvps,
            "reference_converged": ref.converged, "reference_residual": ref.residual,
            "n_parameters": ref.eigenvector.numel(), "backend": ref.backend,
            "power_shift": power.shift,
            "lanczos": solver_row(ref, ref.eigenvalue), "power": solver_row(power, ref.eigenvalue)}


def run_case(case, repeats):
    x, y, b = case["x"], case["y"], case["batch_size"]
    case["batches"] = list(zip(torch.split(x, b), torch.split(y, b)))
    start = time.perf_counter()
    row = {"case": case["name"], "device": str(x.device), "dtype": str(x.dtype).replace("torch.", ""),
           "n_samples": len(x), "batch_size": b, "bn_mode": case["bn_mode"], "state": case["state"]}
    row.update(time_gradient_and_hvps(case, repeats))
    row["solvers"] = compare_solvers(case, case.get("power_budget", 300))
    row["case_seconds"] = time.perf_counter() - start
    print(summary_line(row), flush=True)
    return row


def fmt(x):
    return "n/a" if x is None else f"{x:.1e}"


def summary_line(row):
    s = row["solvers"]
    return (f"{row['case']}: HVP/grad autograd {row['hvp_autograd_over_gradient']:.2f}, "
            f"func {row['hvp_func_over_gradient']:.2f} (auto -> {row['auto_backend']}, backends "
            f"differ by {row['backends_relative_difference']:.1e}); λmax {s['reference_eigenvalue']:.5g}; "
            f"change<1e-3 stops: lanczos at {s['lanczos']['hvps_change_rule']} HVPs "
            f"(err {fmt(s['lanczos']['relative_error_at_stop'])}), "
            f"power at {s['power']['hvps_change_rule']} "
            f"(err {fmt(s['power']['relative_error_at_stop'])}"
            f"{'' if s['power']['converged'] else ', budget exhausted'}); "
            f"to reach 1e-3: lanczos {s['lanczos']['hvps_to_1e-3_accuracy']}, "
            f"power {s['power']['hvps_to_1e-3_accuracy']} [{row['case_seconds']:.0f} s]")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA case")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: steadier ratios on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [run_case(case, repeats=3) for case in cpu_cases()]
    cuda = torch.cuda.is_available() and not args.cpu_only
    if cuda:
        rows += [run_case(case, repeats=5) for case in cuda_cases()]
    record = {
        "benchmark": "sharpness",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "cuda_case": "run" if cuda else "not run: CUDA not available on this machine",
        "stopping_rule_compared": f"relative change < {CHANGE_TOL}",
        "reference": f"Lanczos, residual <= {REFERENCE_TOL} * |lambda|",
        "cases": rows,
        "total_seconds": time.perf_counter() - start,
    }
    S.write_json_atomic(args.out, record)
    print(f"wrote {args.out} ({record['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
