"""The minima-stability experiment (Section 3.1 and appendix F; figures 2, 12 and 4-right).

The chain, one Snakemake rule per step (workflow/rules/stability.smk), every step a file under
``results/<scale>/<experiment>/``:

1. ``baseline/``   synchronous training to a steady state (``delay-stability train``).
2. ``minimum/``    optional polish of that steady state to a critical point: minimum-norm
                   Gauss–Newton for the squared loss (the quick scale), full-batch L-BFGS otherwise,
                   so that ``‖∇L‖`` is tiny and the sharpness cannot drift during continuation
                   (``delay-stability stability-polish``). With squared loss on one-hot targets the
                   network interpolates and the polished point is a true minimum.
3. ``sharpness.json``  a = λmax(H) at the minimum (``delay-stability sharpness``).
4. ``kick/``       the start of every continuation: the minimum plus a perturbation of norm ε along
                   the top Hessian eigenvector (or a random direction), ``delay-stability stability-kick``.
5. ``search/<variant>-m<m>/tau<τ>/``  for each (variant, m, τ): continuation runs from the kicked
                   minimum at learning rates chosen by a downward scan and a bisection on log η
                   (``delay-stability stability-search``); each probe is a full training run directory.
6. ``thresholds.csv``, ``fits.csv``, ``probes.csv``, ``curves.csv``: tidy tables for the
                   figures (experiments/stability_tables.py, ``delay-stability stability-collect``).

Escape criterion (documented in the figures): with ``search.escape.kind: kick_growth`` a continuation
*left the minimum* when its training loss exceeds ``L_min + G²·(L_kick − L_min)``, i.e. when the kick
along the top eigen-direction has grown G-fold in amplitude (G = ``search.escape.growth``), within
the epoch budget
``min(search.max_epochs, search.base_epochs + search.epochs_per_tau·τ)``. Near the edge the
instability grows like ρ^t with ρ = 1 + O((α/α* − 1)/τ), so the budget grows linearly with τ.
With ``kind: loss`` (minibatch runs at paper scale) it left when loss > factor·L0 + delta.
η_max is the largest learning rate that stayed; the bracket [η_max, η_escape] has relative width
at most ``search.rel_tol``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..errors import UserError
from ..files import parse_json_object, read_json
from ..files import write_json as write_json_atomic
from ..spec import deep_merge, read_spec, validate_spec
from ..theory import VARIANTS, critical_alpha

# ----------------------------------------------------------------------------- small helpers
def lr_tag(lr: float) -> str:
    return f"lr{lr:.6e}"


# ----------------------------------------------------------------------------- the grid of the experiment
#: The config blocks of the experiment: the main one, and (at paper scale) fig. 4's own network.
EXPERIMENTS = ("stability", "shifted_stability")


def searches(block: dict) -> list[tuple[str, float, int]]:
    """(variant, m, τ) of every threshold search of an experiment's config block."""
    return [(entry["variant"], float(m), int(tau))
            for entry in block["variants"].values() for m in entry["momenta"] for tau in block["taus"]]


def curve_points(block: dict) -> list[tuple[int, float]]:
    """(τ, factor) of every long continuation of fig. 12 (plain A-SGD at η = factor·η_max)."""
    curves = block.get("curves")
    return [(int(tau), float(f)) for tau in curves["taus"] for f in curves["lr_factors"]] if curves else []


# ----------------------------------------------------------------------------- its files and command flags
def search_file(exp_dir, variant: str, m: float, tau: int) -> str:
    """``<exp_dir>/search/<variant>-m<m>/tau<τ>/search.json``: one threshold search."""
    return str(Path(exp_dir) / "search" / f"{variant}-m{m:g}" / f"tau{tau}" / "search.json")


def curve_file(exp_dir, tau: int, factor: float, name: str = "summary.json") -> str:
    """``<exp_dir>/curves/tau<τ>/x<factor>/<name>``: a file of one long continuation (fig. 12)."""
    return str(Path(exp_dir) / "curves" / f"tau{tau}" / f"x{factor:g}" / name)


def polish_flags(polish) -> str:
    """``stability-polish`` flags of a ``polish`` block (None: copy the baseline as is)."""
    return "--max-iter 0" if not polish else f"--max-iter {polish['max_iter']} --grad-tol {polish['grad_tol']}"


def sharpness_flags(sharpness: dict) -> str:
    """``delay-stability sharpness`` flags of a ``sharpness`` block."""
    flags = [f"--method {sharpness['method']}", f"--tol {sharpness['tol']}", f"--bn-mode {sharpness['bn_mode']}",
             f"--max-iter {sharpness['max_iter']}"]
    if "subset" in sharpness:
        flags.append(f"--subset {sharpness['subset']}")
    return " ".join(flags)


# ----------------------------------------------------------------------------- the search
def probe_budget(tau: int, search: dict) -> int:
    """Epoch budget of one continuation: min(max_epochs, base_epochs + epochs_per_tau·τ)."""
    return int(min(search["max_epochs"], search["base_epochs"] + search["epochs_per_tau"] * tau))


def escape_rule(kick: dict, escape: dict) -> dict:
    """The engine's escape rule ``train loss > factor·L0 + delta`` (L0 = loss at the start) for a
    search's ``escape`` setting.

    ``kick_growth``: left when the kick has grown G-fold in amplitude along the top eigen-direction,
    i.e. loss > L_min + G²·(L_kick − L_min) (factor 0, delta = that level).
    ``loss``: left when loss > factor·L0 + delta (for minibatch runs, where SGD noise kicks).
    """
    if escape["kind"] == "kick_growth":
        l_min, l_kick = kick["loss_minimum"], kick["loss_kicked"]
        if not l_kick > l_min:
            raise UserError("search.escape.kind 'kick_growth' needs a kick (kick.norm > 0) that raises the loss")
        level = l_min + escape["growth"] ** 2 * (l_kick - l_min)
        return {"factor": 0.0, "delta": float(level), "stop": True}
    return {"factor": float(escape["factor"]), "delta": float(escape["delta"]), "stop": True}


def settle_rule(kick: dict, escape: dict, tau: int):
    """Early 'stayed' verdict for kick_growth searches: the kick's amplitude has decayed
    ``settle`` -fold (loss < L_min + (L_kick − L_min)/settle²) for 4τ + 8 epochs in a row — longer
    than one oscillation period of the slowest mode near the edge (≈ 4τ + 2 steps). None otherwise."""
    factor = escape.get("settle")
    if escape["kind"] != "kick_growth" or not factor:
        return None
    l_min, l_kick = kick["loss_minimum"], kick["loss_kicked"]
    return {"below": float(l_min + (l_kick - l_min) / factor**2), "window": 4 * int(tau) + 8}


def probe_spec(base_spec: dict, continuation: dict, *, lr, tau, variant, momentum, init_checkpoint,
               epochs, escape=None, settle=None, mitigation=None) -> dict:
    """The training spec of one continuation from the kicked minimum (``mitigation``: the spec's
    ``optimizer.mitigation``, {name, hyperparameters}, or None for plain delayed SGD)."""
    spec = deep_merge(base_spec, continuation)
    spec = deep_merge(spec, {
        "lr": float(lr),
        "epochs": int(epochs),
        "init_checkpoint": str(init_checkpoint),
        "perturb": 0.0,
        "optimizer": {"delay": int(tau), "variant": variant, "momentum": float(momentum),
                      "schedule": "round_robin", "workers": None},
        "stop": {"steady_state": None,
                 "escape": escape, "settle": settle},
    })
    if mitigation:
        spec["optimizer"]["mitigation"] = dict(mitigation)
    return spec


def run_probe(spec: dict, out_dir: Path) -> dict:
    """One continuation run (cached: an existing summary for the same spec is reused)."""
    from .. import train

    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    run_path = out_dir / "run.json"
    if summary_path.exists() and run_path.exists():
        try:
            if json.loads(run_path.read_text()).get("spec") == validate_spec(spec):
                return json.loads(summary_path.read_text())
        except (json.JSONDecodeError, UserError):
            pass
    return train.run_training(spec, out_dir)


def search_threshold(*, base_spec, continuation, kick, search, variant, momentum, tau, out_dir,
                     log=print, mitigation=None, alpha_theory=None, spec_overrides=None) -> dict:
    """Largest stable learning rate for (variant, m, τ): downward scan, then bisection on log η.

    Learning rates are handled as α = a·η (a = sharpness at the minimum). The scan starts at
    ``alpha_max`` and divides by ``scan_factor`` until a probe stays; the bracket
    [α_stay, α_escape] is then bisected geometrically until α_escape/α_stay − 1 ≤ ``rel_tol``.
    ``mitigation`` (experiments/mitigations.py): every probe uses that rule, and ``alpha_theory`` is
    its predicted edge (default: ``theory.critical_alpha`` of the variant). ``spec_overrides``
    (experiments/random_staleness.py): merged into every probe's spec last (e.g. a random schedule
    and its seed); ``tau`` then only sets the budget and the settle window.
    """
    a = float(kick["sharpness"])
    out_dir = Path(out_dir)
    epochs = probe_budget(tau, search)
    escape = escape_rule(kick, search["escape"])
    settle = settle_rule(kick, search["escape"], tau)
    probes = []

    def probe(alpha):
        lr = alpha / a
        spec = probe_spec(base_spec, continuation, lr=lr, tau=tau, variant=variant, momentum=momentum,
                          init_checkpoint=kick["checkpoint"], epochs=epochs, escape=escape, settle=settle,
                          mitigation=mitigation)
        if spec_overrides:
            spec = deep_merge(spec, spec_overrides)
        t0 = time.time()
        summary = run_probe(spec, out_dir / lr_tag(lr))
        escaped = bool(summary.get("escaped") or summary.get("diverged"))
        record = {"lr": lr, "alpha": alpha, "escaped": escaped,
                  "epochs_to_escape": summary.get("epochs_to_escape") if escaped else None,
                  "epochs_run": summary.get("epochs_run"), "status": summary.get("status"),
                  "final_train_loss": (summary.get("final") or {}).get("train_loss"),
                  "run_dir": str(out_dir / lr_tag(lr))}
        if escaped and record["epochs_to_escape"] is None:
            record["epochs_to_escape"] = summary.get("diverged_epoch")
        probes.append(record)
        log(f"{variant} m={momentum:g} tau={tau}: alpha={alpha:.6g} lr={lr:.6g} "
            f"{'left' if escaped else 'stayed'} ({time.time() - t0:.1f}s)")
        return escaped

    alpha_min, alpha_max = search["alpha_min"], search["alpha_max"]
    factor = search.get("scan_factor", 2.0)
    alpha_hi = alpha_max
    if not probe(alpha_hi):
        alpha_lo, alpha_hi, censored = alpha_hi, None, True   # stable up to the top of the range
    else:
        censored = False
        alpha_lo = None
        alpha = alpha_hi
        while alpha_lo is None:
            alpha = alpha / factor
            if alpha < alpha_min:
                raise UserError(
                    f"stability search {variant} m={momentum:g} tau={tau}: every learning rate down to "
                    f"α = a·η ≥ search.alpha_min={alpha_min:g} left the minimum; lower search.alpha_min")
            if probe(alpha):
                alpha_hi = alpha
            else:
                alpha_lo = alpha
        while alpha_hi / alpha_lo - 1.0 > search["rel_tol"]:
            mid = math.sqrt(alpha_lo * alpha_hi)
            if probe(mid):
                alpha_hi = mid
            else:
                alpha_lo = mid
    if alpha_theory is None:
        alpha_theory = critical_alpha(int(tau), momentum=float(momentum), variant=variant)
    result = {
        "variant": variant, "momentum": float(momentum), "tau": int(tau), "sharpness": a,
        "lr_max": alpha_lo / a, "lr_escape": (alpha_hi / a) if alpha_hi else None,
        "alpha_measured": alpha_lo, "alpha_escape": alpha_hi, "alpha_theory": alpha_theory,
        "ratio": alpha_lo / alpha_theory, "censored": censored, "budget_epochs": epochs,
        "escape_rule": escape, "search": search,
        "probes": sorted(probes, key=lambda p: p["lr"]),
    }
    if mitigation:
        result["mitigation"] = dict(mitigation)
    return result


def run_curve(*, search_json, kick, base_spec, continuation, factor, epochs, out_dir) -> dict:
    """A long continuation at η = factor·η_max (no early stop), for the curves of fig. 12: what
    happens after a run leaves the minimum (appendix F: it settles in another minimum)."""
    from .. import train

    result = read_json(search_json, "search result")
    lr = factor * result["lr_max"]
    spec = probe_spec(base_spec, continuation, lr=lr, tau=result["tau"], variant=result["variant"],
                      momentum=result["momentum"], init_checkpoint=kick["checkpoint"], epochs=epochs)
    # only a non-finite loss ends these runs: L0 is the tiny loss at the kicked minimum
    spec["stop"]["divergence"] = {"loss_factor": 1e300}
    info = {"variant": result["variant"], "momentum": result["momentum"], "tau": result["tau"],
            "lr": lr, "lr_factor": factor, "lr_max": result["lr_max"]}
    write_json_atomic(Path(out_dir) / "curve.json", info)
    return train.run_training(spec, str(out_dir))


# ----------------------------------------------------------------------------- minimum and kick
def _flat(tensors):
    """The tensors as one flat vector (``torch.nn.utils.parameters_to_vector``)."""
    from torch.nn.utils import parameters_to_vector

    return parameters_to_vector(tensors)


def _gauss_newton(model, batches, params, *, max_iter, grad_tol, log=print):
    """Minimum-norm Gauss–Newton steps for the squared loss L = (1/2N) Σ_i ‖f(x_i) − e_{y_i}‖².

    With r(w) the N·C residuals scaled by 1/√N and J = ∂r/∂w (N·C × P, P > N·C for an
    over-parameterised network), each step solves δ = −Jᵀ(JJᵀ + λI)⁻¹ r: the smallest move that
    interpolates the linearised model. It converges quadratically to a zero-loss minimum near the
    starting point; λ (Levenberg–Marquardt) grows ×10 when a step does not lower the loss.
    """
    import torch
    from torch.func import functional_call, jacrev

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    w = torch.cat([p.detach().reshape(-1) for p in params])
    n = len(y)

    def residual(flat):
        tensors = [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        out = functional_call(model, dict(zip(names, tensors)), (x,))
        onehot = torch.nn.functional.one_hot(y, out.shape[1]).to(out.dtype)
        return (out - onehot).reshape(-1) / math.sqrt(n)

    lam, iterations = 1e-6, 0
    r = residual(w)
    loss = 0.5 * float(r @ r)
    while iterations < max_iter:
        J = jacrev(residual)(w)
        grad = J.T @ r
        if float(grad.norm()) <= grad_tol:
            break
        gram = J @ J.T
        while True:
            eye = torch.eye(len(r), dtype=r.dtype, device=r.device)
            step = -J.T @ torch.linalg.solve(gram + lam * eye, r)
            r_new = residual(w + step)
            loss_new = 0.5 * float(r_new @ r_new)
            if loss_new < loss:
                w, r, loss, lam = w + step, r_new, loss_new, max(lam / 10, 1e-12)
                break
            lam *= 10
            if lam > 1e8:
                return w, iterations  # no descent possible: at a minimum to working precision
        iterations += 1
        log(f"Gauss-Newton {iterations}: loss {loss:.3e}, |grad| {float(grad.norm()):.3e}, lambda {lam:.0e}")
    return w, iterations


def _lbfgs(model, loss_fn, batches, params, *, max_iter, grad_tol):
    """Full-batch L-BFGS with a strong Wolfe line search (any loss)."""
    import torch

    from .. import train

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=min(max_iter, 500), history_size=50,
                            tolerance_grad=grad_tol, tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss, grads = train.mean_loss_and_grad(model, loss_fn, batches, params)
        for p, g in zip(params, grads):
            p.grad = g
        return torch.tensor(loss, dtype=torch.float64)

    iterations = 0
    while iterations < max_iter:
        opt.step(closure)
        done = opt.state[opt._params[0]]["n_iter"]
        _, grads = train.mean_loss_and_grad(model, loss_fn, batches, params)
        stalled = done == iterations
        iterations = done
        if float(_flat(grads).norm()) <= grad_tol or stalled:
            break
    return iterations


def polish_minimum(checkpoint, out, info_path, *, max_iter=100, grad_tol=1e-9, device="auto",
                   method="auto") -> dict:
    """Polish a steady state to a critical point of the full-batch training loss.

    Synchronous GD with a fixed η sits at its edge of stability (sharpness ≈ 2/η, Cohen et al. 2021)
    or keeps sharpening slowly; a continuation from there would measure a moving target. For the
    squared loss, minimum-norm Gauss–Newton (``method="gauss_newton"``, the default for ``loss: mse``)
    reaches an interpolating minimum close to the start, where the gradient vanishes to rounding
    error; otherwise L-BFGS drives ‖∇L‖ down. Afterwards the weights, the loss and the sharpness stay
    put under any stable continuation. ``max_iter = 0`` copies the checkpoint and only records the
    loss and gradient norm there.
    """
    import torch

    from .. import train

    t0 = time.time()
    run = train.load_run(checkpoint, device)
    model, spec, loss_fn = run.model, run.spec, run.loss_fn
    batches = run.batches()
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    if method == "auto":
        method = "gauss_newton" if spec["loss"] == "mse" else "lbfgs"
    if method == "gauss_newton" and spec["loss"] != "mse":
        raise UserError("polish method gauss_newton needs loss: mse in the baseline spec")
    loss0, grad0 = train.mean_loss_and_grad(model, loss_fn, batches, params)
    start = torch.cat([p.detach().reshape(-1) for p in params])
    iterations = 0
    if max_iter > 0 and float(_flat(grad0).norm()) > grad_tol:
        if method == "gauss_newton":
            w, iterations = _gauss_newton(model, batches, params, max_iter=max_iter, grad_tol=grad_tol)
            with torch.no_grad():
                for p, t in zip(params, torch.split(w, [p.numel() for p in params])):
                    p.copy_(t.view_as(p))
        else:
            iterations = _lbfgs(model, loss_fn, batches, params, max_iter=max_iter, grad_tol=grad_tol)
    loss1, grad1 = train.mean_loss_and_grad(model, loss_fn, batches, params)
    moved = float((torch.cat([p.detach().reshape(-1) for p in params]) - start).norm())
    info = {
        "checkpoint": str(checkpoint), "out": str(out), "method": method if max_iter > 0 else "none",
        "max_iter": max_iter, "grad_tol": grad_tol, "iterations": iterations,
        "loss_before": loss0, "grad_norm_before": float(_flat(grad0).norm()),
        "loss_after": loss1, "grad_norm_after": float(_flat(grad1).norm()), "distance_moved": moved,
        "seconds": round(time.time() - t0, 3), "n_samples": sum(len(y) for _, y in batches),
    }
    if not math.isfinite(loss1):
        raise UserError(f"polishing {checkpoint} diverged (loss {loss1}); set polish: null in the config")
    train.save_checkpoint(str(out), {"spec": spec, "model": model.state_dict(), "polish": info})
    write_json_atomic(info_path, info)
    return info


def kick_minimum(checkpoint, sharpness_json, out, info_path, *, norm, direction="top_eigenvector",
                 device="auto", tol=1e-10, max_iter=200, method="lanczos", bn_mode="train", seed=0) -> dict:
    """The start of every continuation: w = w* + ε·u with ‖u‖ = 1.

    u is the top eigenvector of the training-loss Hessian at w* (``direction="top_eigenvector"``,
    the direction that loses stability first, eq. 13) or a seeded random direction. Records
    L_min = L(w*), L_kick = L(w) and a, which the escape criterion uses.
    """
    import torch

    from .. import sharpness, train

    run = train.load_run(checkpoint, device)
    model, spec, loss_fn, device = run.model, run.spec, run.loss_fn, run.device
    batches = run.batches()
    params = [p for p in model.parameters() if p.requires_grad]
    a_record = read_json(sharpness_json, "sharpness result")
    model.train()
    loss_min, _ = train.mean_loss_and_grad(model, loss_fn, batches, params)
    if norm > 0 and direction == "top_eigenvector":
        result = sharpness.top_eigenvalue(model, loss_fn, batches, tol=tol, max_iter=max_iter,
                                          method=method, bn_mode=bn_mode,
                                          generator=torch.Generator().manual_seed(seed))
        u = result.eigenvector.to(device)
        eig = result.eigenvalue
    else:
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(sum(p.numel() for p in params), generator=g, dtype=torch.float64).to(device)
        eig = None
    u = u / u.norm()
    with torch.no_grad():
        offset = 0
        for p in params:
            k = p.numel()
            p.add_((norm * u[offset:offset + k]).view_as(p).to(p.dtype))
            offset += k
    loss_kick, _ = train.mean_loss_and_grad(model, loss_fn, batches, params)
    info = {
        "checkpoint": str(out), "minimum": str(checkpoint), "norm": norm, "direction": direction,
        "sharpness": float(a_record["eigenvalue"]), "kick_eigenvalue": eig,
        "loss_minimum": loss_min, "loss_kicked": loss_kick,
        "predicted_loss_increase": 0.5 * float(a_record["eigenvalue"]) * norm**2
        if direction == "top_eigenvector" else None,
    }
    train.save_checkpoint(str(out), {"spec": spec, "model": model.state_dict(), "kick": info})
    write_json_atomic(info_path, info)
    return info


# ----------------------------------------------------------------------------- command line
def _cli_polish(args):
    info = polish_minimum(args.checkpoint, args.out, args.info, max_iter=args.max_iter,
                          grad_tol=args.grad_tol, device=args.device, method=args.method)
    print(f"minimum: loss {info['loss_before']:.3e} -> {info['loss_after']:.3e}, |grad| "
          f"{info['grad_norm_before']:.2e} -> {info['grad_norm_after']:.2e} ({info['iterations']} {info['method']} iterations)")


def _cli_kick(args):
    s = read_json(args.sharpness, "sharpness result")
    info = kick_minimum(args.checkpoint, args.sharpness, args.out, args.info, norm=args.norm,
                        direction=args.direction, device=args.device,
                        tol=min(float(s.get("tol", 1e-8)), 1e-8), method="lanczos",
                        bn_mode=s.get("bn_mode", "train"))
    print(f"kick {info['norm']:g} along {info['direction']}: loss {info['loss_minimum']:.3e} -> {info['loss_kicked']:.3e}")


def _cli_search(args):
    kick = read_json(args.kick, "kick record")
    base_spec = read_spec(args.spec)
    result = search_threshold(
        base_spec=base_spec, continuation=parse_json_object(args.continuation, "--continuation"),
        kick=kick, search=parse_json_object(args.search, "--search"), variant=args.variant,
        momentum=args.momentum, tau=args.tau, out_dir=Path(args.out).parent,
        log=lambda msg: print(msg, flush=True))
    write_json_atomic(args.out, result)
    print(f"eta_max = {result['lr_max']:.6g} (alpha = {result['alpha_measured']:.6g}, "
          f"theory {result['alpha_theory']:.6g}, ratio {result['ratio']:.4f})")


def _cli_curve(args):
    summary = run_curve(search_json=args.search, kick=read_json(args.kick, "kick record"),
                        base_spec=read_spec(args.spec),
                        continuation=parse_json_object(args.continuation, "--continuation"),
                        factor=args.factor, epochs=args.epochs, out_dir=args.out)
    print(f"{args.out}: {summary['status']} after {summary['epochs_run']} epochs")


def register(subparsers) -> None:
    p = subparsers.add_parser("stability-polish", help="polish a steady state to a minimum (Gauss-Newton/L-BFGS)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="checkpoint of the minimum")
    p.add_argument("--info", required=True, help="JSON record (losses, gradient norms, iterations)")
    p.add_argument("--max-iter", type=int, default=100, help="iterations (0: copy as is)")
    p.add_argument("--grad-tol", type=float, default=1e-9)
    p.add_argument("--method", choices=("auto", "gauss_newton", "lbfgs"), default="auto",
                   help="auto: Gauss-Newton for loss mse, else L-BFGS")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cli_polish)

    p = subparsers.add_parser("stability-kick", help="perturb a minimum along its top eigenvector")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sharpness", required=True, help="sharpness JSON of the minimum")
    p.add_argument("--norm", type=float, required=True)
    p.add_argument("--direction", choices=("top_eigenvector", "random"), default="top_eigenvector")
    p.add_argument("--out", required=True)
    p.add_argument("--info", required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cli_kick)

    p = subparsers.add_parser("stability-search", help="largest stable learning rate for (variant, m, tau)")
    p.add_argument("--kick", required=True, help="kick.json (start checkpoint, losses, sharpness)")
    p.add_argument("--spec", required=True, help="the baseline's training spec")
    p.add_argument("--continuation", default="{}", help="JSON: spec overrides of every continuation")
    p.add_argument("--search", required=True, help="JSON: the search settings (see config.yaml)")
    p.add_argument("--variant", choices=VARIANTS, default="plain")
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--tau", type=int, required=True)
    p.add_argument("--out", required=True, help="search.json; probes go in folders beside it")
    p.set_defaults(func=_cli_search)

    p = subparsers.add_parser("stability-curve", help="a long continuation at factor x eta_max (fig. 12)")
    p.add_argument("--search", required=True, help="search.json of the (variant, m, tau)")
    p.add_argument("--kick", required=True)
    p.add_argument("--spec", required=True, help="the baseline's training spec")
    p.add_argument("--continuation", default="{}", help="JSON: spec overrides of every continuation")
    p.add_argument("--factor", type=float, required=True, help="eta = factor * eta_max")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(func=_cli_curve)
