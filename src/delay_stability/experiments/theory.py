"""Commands of the exact theory: `lr`, `threshold` and `theory-table`.

    delay-stability lr --eta0 0.1 --tau 32                 exact η and eq. 8's π η0 / (4(τ + 0.5))
    delay-stability threshold --tau 32 --momentum 0.9 --variant shifted     α* = a·η at the edge
    delay-stability theory-table fig6 --out results/theory/fig6.csv --tau-max 64

A delay is a constant ``--tau`` or a distribution: ``--uniform LOW HIGH``, ``--gaussian MEAN``
(appendix C), ``--geometric Q`` (P(τ=k) = (1−Q) Q^k) or ``--probs p0,p1,...`` (P(τ=k), k = 0..K).
The tidy tables behind the theory figures (fig6, fig7, fig8, fig10, fig4a, bridge) are built here;
the figures themselves only read them (see plots/theory.py).
"""

from __future__ import annotations

import json

from .. import files, theory
from ..errors import UserError

# ------------------------------------------------------------------------------------------------
# Tidy tables for the theory figures
# ------------------------------------------------------------------------------------------------


def _edge_row(figure, variant, momentum, delay, **keys):
    """One row: the edge α* of (variant, momentum, delay) with its inverse and the mean delay."""
    alpha = theory.critical_alpha(delay, momentum, variant)
    return {"figure": figure, "variant": variant, "momentum": float(momentum), **keys,
            "mean_delay": theory.mean_delay(delay), "alpha_star": alpha, "inv_alpha": 1.0 / alpha}


def fig6_table(tau_max=64):
    """Plain A-SGD, constant delay τ = 0..tau_max (eq. 4): α*, the closed form 2 sin(π/(4τ+2))
    (eq. 6) and the linear approximation 1/α* ≈ (2τ+1)/π (eq. 7)."""
    tau_max = theory.check_tau(tau_max, "tau_max")
    rows = []
    for tau in range(tau_max + 1):
        row = _edge_row("fig6", "plain", 0.0, tau, tau=tau)
        row["alpha_eq6"] = theory.eq6_alpha(tau)
        row["inv_alpha_eq7"] = theory.eq7_inv_alpha(tau)
        rows.append(row)
    return rows


def fig7_table(b_max=64):
    """τ ~ unif{1, b}, b = 1..b_max (eq. 20), with E[τ] = (1 + b)/2 and eq. 7 at E[τ] for reference."""
    b_max = theory.check_tau(b_max, "b_max")
    if b_max < 1:
        raise ValueError(f"b_max must be >= 1, got {b_max}")
    rows = []
    for b in range(1, b_max + 1):
        row = _edge_row("fig7", "plain", 0.0, theory.uniform_delay(1, b), b=b)
        row["inv_alpha_eq7"] = theory.eq7_inv_alpha(row["mean_delay"])
        rows.append(row)
    return rows


def fig8_table(mu_max=30):
    """Appendix C's discretised N(μ, 1) on k = 1..2μ, μ = 1..mu_max (eq. 19), and eq. 7 at E[τ]."""
    mu_max = theory.check_tau(mu_max, "mu_max")
    if mu_max < 1:
        raise ValueError(f"mu_max must be >= 1, got {mu_max}")
    rows = []
    for mu in range(1, mu_max + 1):
        row = _edge_row("fig8", "plain", 0.0, theory.gaussian_delay(mu), mu=mu)
        row["inv_alpha_eq7"] = theory.eq7_inv_alpha(row["mean_delay"])
        rows.append(row)
    return rows


def _momentum_sweep(figure, variant, tau_max, momenta):
    tau_max = theory.check_tau(tau_max, "tau_max")
    momenta = _check_list(momenta, "momenta", theory.check_momentum)
    return [_edge_row(figure, variant, m, tau, tau=tau) for m in momenta for tau in range(tau_max + 1)]


PAPER_MOMENTA = (0.0, 0.3, 0.5, 0.7, 0.9)


def fig10_table(tau_max=64, momenta=PAPER_MOMENTA):
    """Server momentum m with dampening (eq. 26): α*(τ) for τ = 0..tau_max and each m."""
    return _momentum_sweep("fig10", "momentum", tau_max, momenta)


def fig4a_table(tau_max=64, momenta=PAPER_MOMENTA):
    """Shifted momentum (eq. 11): α*(τ) for τ = 0..tau_max and each m."""
    return _momentum_sweep("fig4a", "shifted", tau_max, momenta)


def bridge_table(qs=(0.0, 0.25, 0.5, 0.75, 0.9, 0.95)):
    """Geometric delay P(τ=k) = (1−q) q^k (eq. 19, truncated at tail 1e-12) vs momentum q at τ = 0.

    Columns: the geometric-delay edge α*, the momentum-q edge from eq. 26 and its closed form
    2(1+q)/(1−q), the momentum whose τ = 0 edge equals α* (m = (α* − 2)/(α* + 2)), and the
    M = 1/(1−q) workers whose implicit momentum 1 − 1/M is q (*Asynchrony begets Momentum*).
    """
    qs = _check_list(qs, "qs", theory.check_momentum)
    rows = []
    for q in qs:
        probs = theory.geometric_delay(q)
        row = _edge_row("bridge", "plain", 0.0, probs, q=q)
        alpha = row["alpha_star"]
        workers = 1.0 / (1.0 - q)
        row.update(
            support=len(probs),
            alpha_momentum=theory.critical_alpha(0, q, "momentum"),
            alpha_closed_form=theory.momentum_alpha_tau0(q),
            matched_momentum=(alpha - 2.0) / (alpha + 2.0),
            workers=workers,
            implicit_momentum=1.0 - 1.0 / workers,
        )
        rows.append(row)
    return rows


#: figure -> (table builder, {builder option: command-line flag}).
TABLES = {
    "fig6": (fig6_table, {"tau_max": "--tau-max"}),
    "fig7": (fig7_table, {"b_max": "--b-max"}),
    "fig8": (fig8_table, {"mu_max": "--mu-max"}),
    "fig10": (fig10_table, {"tau_max": "--tau-max", "momenta": "--momenta"}),
    "fig4a": (fig4a_table, {"tau_max": "--tau-max", "momenta": "--momenta"}),
    "bridge": (bridge_table, {"qs": "--qs"}),
}
TABLE_OPTIONS = {"tau_max": int, "b_max": int, "mu_max": int, "momenta": "list", "qs": "list"}


def theory_table(figure, **options):
    """The tidy rows of a theory figure's table; ``options`` are the builder's keyword arguments."""
    if figure not in TABLES:
        raise ValueError(f"unknown theory figure {figure!r}; known: {', '.join(TABLES)}")
    builder, allowed = TABLES[figure]
    for key in options:
        if key not in allowed:
            raise ValueError(f"option {key!r} does not apply to {figure} (it takes: {', '.join(allowed)})")
    return builder(**options)


def _check_list(values, name, check):
    values = list(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    out = []
    for v in values:
        try:
            out.append(check(v))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return out


def write_csv(path, rows):
    """Write tidy rows (dicts with the same keys) as CSV, atomically; floats by repr, so they read
    back bit for bit."""
    files.write_csv(path, list(rows[0]), rows)


# ------------------------------------------------------------------------------------------------
# Command-line interface
# ------------------------------------------------------------------------------------------------


def _parse_floats(text, flag):
    try:
        return [float(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _add_delay_arguments(parser):
    delay = parser.add_argument_group("delay (exactly one)").add_mutually_exclusive_group(required=True)
    delay.add_argument("--tau", type=int, metavar="TAU", help="constant delay tau >= 0 (eq. 4)")
    delay.add_argument("--uniform", type=int, nargs=2, metavar=("LOW", "HIGH"),
                       help="tau ~ unif{LOW, ..., HIGH} (eq. 20)")
    delay.add_argument("--gaussian", type=float, metavar="MEAN",
                       help="appendix C's discretised N(MEAN, 1) on k = 1..2*MEAN")
    delay.add_argument("--geometric", type=float, metavar="Q",
                       help="P(tau=k) = (1-Q) Q^k, truncated at tail 1e-12 (the momentum-Q dynamics)")
    delay.add_argument("--probs", metavar="P0,P1,...",
                       help="P(tau=k) for k = 0, 1, ..., K (must sum to 1)")
    delay.add_argument("--staleness", metavar="FILE",
                       help="the measured histogram of a staleness.csv of real workers (parameter-server)")
    parser.set_defaults(workers=None, criterion=None, landing=None, noise=None)
    parser.add_argument("--momentum", type=float, default=0.0, metavar="M",
                        help="momentum m in (-1, 1), negative allowed (default 0)")
    parser.add_argument("--variant", choices=theory.VARIANTS, default=None,
                        help="plain (eq. 4/19), momentum (server momentum with dampening, eq. 26) or "
                             "shifted (eq. 11); default: momentum if --momentum != 0, else plain")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return delay


def _flagged(flag, fn, *args):
    """Call fn(*args), turning a ValueError into a UserError that names the flag."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _delay_from_args(args):
    """(delay, description) from the mutually exclusive delay flags."""
    if args.tau is not None:
        tau = _flagged("--tau", theory.check_tau, args.tau)
        return tau, {"kind": "constant", "tau": tau}
    if args.uniform is not None:
        low, high = args.uniform
        return _flagged("--uniform", theory.uniform_delay, low, high), {"kind": "uniform", "low": low, "high": high}
    if args.gaussian is not None:
        return _flagged("--gaussian", theory.gaussian_delay, args.gaussian), {"kind": "gaussian", "mean": args.gaussian}
    if args.geometric is not None:
        return _flagged("--geometric", theory.geometric_delay, args.geometric), {"kind": "geometric", "q": args.geometric}
    if getattr(args, "staleness", None) is not None:
        from ..staleness import histogram, read_staleness

        values = read_staleness(args.staleness)
        return histogram(values), {"kind": "staleness", "file": args.staleness, "updates": len(values)}
    probs = _flagged("--probs", theory.check_probabilities, _parse_floats(args.probs, "--probs"))
    return probs, {"kind": "probs", "probs": [float(p) for p in probs]}


def _edge_from_args(args):
    """Validated (delay, description, momentum, variant, α*) from the shared flags."""
    delay, description = _delay_from_args(args)
    momentum = _flagged("--momentum", theory.check_momentum, args.momentum)
    variant = args.variant or ("momentum" if momentum != 0 else "plain")
    alpha = _flagged("--variant", theory.critical_alpha, delay, momentum, variant)
    return delay, description, momentum, variant, alpha


def _describe(description, mean):
    kind = description["kind"]
    if kind == "constant":
        return f"constant delay tau = {description['tau']}"
    if kind == "uniform":
        return f"tau ~ unif{{{description['low']}..{description['high']}}}, E[tau] = {mean:.6g}"
    if kind == "gaussian":
        return f"discretised N({description['mean']:g}, 1), E[tau] = {mean:.6g}"
    if kind == "geometric":
        return f"geometric, P(tau=k) = (1-q) q^k with q = {description['q']:g}, E[tau] = {mean:.6g}"
    if kind == "staleness":
        return f"measured staleness of {description['updates']} updates in {description['file']}, E[tau] = {mean:.6g}"
    return f"P(tau=k) given for k = 0..{len(description['probs']) - 1}, E[tau] = {mean:.6g}"


def cmd_threshold(args):
    if args.mitigation is not None:
        if args.workers is not None or args.criterion is not None:
            raise UserError("--mitigation: the mitigation edges are for a constant delay under the mean "
                            "criterion; drop --workers/--criterion")
        return _mitigation_threshold(args)
    if args.workers is not None or args.criterion is not None:
        return _random_threshold(args)
    for flag, value in (("--landing", args.landing), ("--noise", args.noise)):
        if value is not None:
            raise UserError(f"{flag} applies with --workers or --criterion")
    delay, description, momentum, variant, alpha = _edge_from_args(args)
    mean = theory.mean_delay(delay)
    result = {"variant": variant, "momentum": momentum, "delay": description, "mean_delay": mean,
              "alpha_star": alpha, "inv_alpha_star": 1.0 / alpha}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"alpha* = a*eta at the stability edge = {alpha:.12g}   (1/alpha* = {1.0 / alpha:.12g})")
    print(f"  {_describe(description, mean)}; variant {variant}, momentum {momentum:g}")
    return 0


def cmd_lr(args):
    if args.mitigation is not None:
        return _mitigation_lr(args)
    eta0 = _flagged("--eta0", theory.check_positive, args.eta0, "eta0")
    delay, description, momentum, variant, alpha = _edge_from_args(args)
    alpha0 = theory.critical_alpha(0, momentum, variant)
    mean = theory.mean_delay(delay)
    eta = theory.recommended_lr(eta0, delay, momentum, variant)
    eta8 = theory.eq8_lr(eta0, mean)
    result = {"eta0": eta0, "variant": variant, "momentum": momentum, "delay": description,
              "mean_delay": mean, "alpha_star": alpha, "alpha_star_0": alpha0,
              "eta": eta, "eta_eq8": eta8}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"eta = {eta:.12g}   exact: eta0 * alpha*(tau) / alpha*(0) = {eta0:g} * {alpha:.9g} / {alpha0:.9g}")
    note = "" if variant == "plain" else "; derived for plain A-SGD"
    print(f"eta = {eta8:.12g}   eq. 8: pi * eta0 / (4 (E[tau] + 0.5)){note}")
    print(f"  {_describe(description, mean)}; variant {variant}, momentum {momentum:g}")
    return 0


# ------------------------------------------------------------------------------------------------
# Random staleness (theory section 8): `threshold --criterion C [--workers M --landing L]`
# ------------------------------------------------------------------------------------------------


def _add_random_arguments(parser, delay_group):
    delay_group.add_argument("--workers", type=int, metavar="M",
                             help="M workers, each with one gradient in flight, landing by --landing")
    group = parser.add_argument_group("random staleness (theory section 8)")
    group.add_argument("--criterion", choices=theory.CRITERIA, default=None,
                       help="mean (rho(E[A]); eq. 19 for i.i.d. delays, the default), mean-square "
                            "(rho(E[A kron A])) or almost-sure (top Lyapunov exponent, Monte Carlo)")
    group.add_argument("--landing", choices=theory.LANDINGS, default=None,
                       help="with --workers: which worker lands (default uniform; gaussian: "
                            "P ~ Phi((staleness - M)/(M/4)); round-robin: the oldest)")
    group.add_argument("--noise", type=float, default=None, metavar="NU",
                       help="noise-to-signal ratio of the curvature the landing gradient sees, "
                            "alpha_t = alpha (1 + NU xi_t) (default 0)")
    group.add_argument("--chains", type=int, default=64, help="almost-sure: Monte-Carlo chains (default 64)")
    group.add_argument("--steps", type=int, default=4000,
                       help="almost-sure: steps per chain after burn-in (default 4000)")
    group.add_argument("--seed", type=int, default=0, help="almost-sure: seed of the simulation (default 0)")


def random_edge(model, criterion, momentum=0.0, variant="plain", noise=0.0, settings=None):
    """{"alpha", "stderr", ...} of a staleness model: {"workers": M, "landing": L} or {"probs": p}
    (a constant delay is {"tau": τ}: every criterion is its deterministic edge)."""
    if "workers" in model:
        return theory.worker_edge(model["workers"], criterion, model["landing"], momentum, variant, noise,
                                  settings)
    if "tau" in model:
        if noise:
            return theory.iid_edge(_point_mass(model["tau"]), criterion, momentum, variant, noise, settings)
        return {"alpha": theory.critical_alpha(model["tau"], momentum, variant), "stderr": 0.0}
    return theory.iid_edge(model["probs"], criterion, momentum, variant, noise, settings)


def _point_mass(tau):
    p = [0.0] * (tau + 1)
    p[tau] = 1.0
    return p


def _random_threshold(args):
    criterion = args.criterion or "mean"
    noise = _flagged("--noise", theory.check_noise, args.noise if args.noise is not None else 0.0)
    momentum = _flagged("--momentum", theory.check_momentum, args.momentum)
    variant = args.variant or ("momentum" if momentum != 0 else "plain")
    try:
        settings = theory.LyapunovSettings(chains=args.chains, steps=args.steps, seed=args.seed)
    except ValueError as exc:
        raise UserError(f"--chains/--steps: {exc}") from None
    if args.workers is not None:
        workers = _flagged("--workers", theory.check_workers, args.workers)
        landing = args.landing or "uniform"
        model, description = {"workers": workers, "landing": landing}, {"kind": "workers", "workers": workers,
                                                                       "landing": landing}
        text = f"{workers} workers, {landing} landing"
    else:
        if args.landing is not None:
            raise UserError("--landing applies with --workers")
        delay, description = _delay_from_args(args)
        model = {"tau": delay} if isinstance(delay, int) else {"probs": delay}
        text = _describe(description, theory.mean_delay(delay))
    try:
        result = random_edge(model, criterion, momentum, variant, noise, settings)
    except ValueError as exc:
        raise UserError(f"--criterion {criterion}: {exc}") from None
    alpha, err = result["alpha"], result["stderr"]
    out = {"criterion": criterion, "variant": variant, "momentum": momentum, "noise": noise,
           "staleness": description, "alpha_star": alpha, "stderr": err, "inv_alpha_star": 1.0 / alpha}
    if criterion == "almost-sure":
        out["lyapunov"] = settings.as_dict()
    if args.json:
        print(json.dumps(out))
        return 0
    pm = f" +- {err:.2g} (Monte-Carlo standard error)" if criterion == "almost-sure" else ""
    print(f"alpha* = a*eta at the {criterion} stability edge = {alpha:.9g}{pm}   (1/alpha* = {1.0 / alpha:.9g})")
    print(f"  {text}; variant {variant}, momentum {momentum:g}, curvature noise {noise:g}")
    return 0


# ------------------------------------------------------------------------------------------------
# Delay mitigations (theory section 6): `threshold --mitigation NAME`, `lr --mitigation NAME`
# ------------------------------------------------------------------------------------------------


def _add_mitigation_arguments(parser):
    group = parser.add_argument_group("delay mitigation (constant --tau only)")
    group.add_argument("--mitigation", choices=theory.MITIGATIONS, default=None,
                       help="a published staleness mitigation; alpha* is in units of the base step eta")
    group.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                       help="a hyperparameter of the mitigation (repeatable), e.g. --hp beta=0.9, "
                            "--hp lambda0=0.04, --hp tau_c=0 --hp smoothness=1")
    group.add_argument("--noise-c", dest="noise_c", type=float, default=0.0, metavar="C",
                       help="dc-asgd-*: c = lambda E[g^2]/a of the noise model (0: a full-batch minimum)")


def _mitigation_from_args(args):
    """(τ, name, hyperparameters, c, α*) of `--mitigation` with its `--hp` flags."""
    if args.tau is None:
        raise UserError("--mitigation: the mitigation edges are for a constant delay: give --tau")
    if args.momentum != 0.0 or args.variant not in (None, "plain"):
        raise UserError("--mitigation replaces the update of plain A-SGD: drop --momentum/--variant "
                        "(spike-compensation and weight-prediction take --hp beta=...)")
    tau = _flagged("--tau", theory.check_tau, args.tau)
    given = {}
    for item in args.hp:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--hp {item!r}: expected KEY=VALUE, e.g. beta=0.9")
        try:
            given[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"--hp {item!r}: {value!r} is not a number") from None
    name, hp = _flagged("--hp", theory.check_mitigation, args.mitigation, given)
    alpha = _flagged("--mitigation", lambda: theory.mitigation_alpha(name, tau, hp, c=args.noise_c))
    return tau, name, hp, args.noise_c, alpha


def _mitigation_threshold(args):
    tau, name, hp, c, alpha = _mitigation_from_args(args)
    exact = theory.mitigation_is_exact(name, c)
    plain = theory.critical_alpha(tau)
    inv = 0.0 if alpha == float("inf") else 1.0 / alpha
    result = {"mitigation": name, "hyperparameters": hp, "tau": tau, "noise_c": c, "alpha_star": alpha,
              "inv_alpha_star": inv, "exact": exact, "alpha_star_plain": plain}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"alpha* = a*eta at the stability edge = {alpha:.12g}   (1/alpha* = {inv:.12g})")
    how = "exact linearisation" if exact else ("numerical, scalar recurrence" if name == "gap-aware"
                                                else "noise model c = lambda E[g^2]/a")
    print(f"  constant delay tau = {tau}; mitigation {name} {json.dumps(hp)}; in units of the base step eta "
          f"({how}); plain A-SGD: {plain:.9g}")
    return 0


def _mitigation_lr(args):
    eta0 = _flagged("--eta0", theory.check_positive, args.eta0, "eta0")
    tau, name, hp, c, alpha = _mitigation_from_args(args)
    # the same rule without delay (gap-aware at tau = 0 is plain SGD: 2)
    alpha0 = 2.0 if name == "gap-aware" else theory.mitigation_alpha(name, 0, hp, c=c)
    eta = eta0 * alpha / alpha0
    result = {"eta0": eta0, "mitigation": name, "hyperparameters": hp, "tau": tau, "noise_c": c,
              "alpha_star": alpha, "alpha_star_0": alpha0, "eta": eta}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"eta = {eta:.12g}   eta0 * alpha*(tau) / alpha*(0) = {eta0:g} * {alpha:.9g} / {alpha0:.9g}")
    print(f"  constant delay tau = {tau}; mitigation {name} {json.dumps(hp)}")
    return 0


def _table_options(args):
    """The builder options given on the command line, checked against the figure's options."""
    _, allowed = TABLES[args.figure]
    options = {}
    for key, kind in TABLE_OPTIONS.items():
        text = getattr(args, key)
        if text is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key not in allowed:
            raise UserError(f"{flag} does not apply to {args.figure} (it takes: "
                            f"{', '.join(TABLES[args.figure][1].values()) or 'no options'})")
        options[key] = text if kind is int else _parse_floats(text, flag)
    return options


def cmd_theory_table(args):
    options = _table_options(args)
    try:
        rows = theory_table(args.figure, **options)
    except ValueError as exc:  # name the flag, not the builder's keyword
        message = str(exc)
        for key, flag in TABLES[args.figure][1].items():
            if message.startswith(key):
                message = flag + message[len(key):]
        raise UserError(f"{args.figure}: {message}") from None
    write_csv(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def register(subparsers):
    """Add `lr`, `threshold` and `theory-table` to the `delay-stability` command."""
    p = subparsers.add_parser(
        "lr", help="learning rate that keeps the tau=0 minima stable at delay tau",
        description="The learning rate eta that keeps the minima that were stable at tau = 0 with eta0 "
                    "stable at the given delay: exact, eta = eta0 * alpha*(tau)/alpha*(0) from the "
                    "characteristic equation, and the paper's eq. 8, pi*eta0/(4(tau+0.5)).")
    p.add_argument("--eta0", type=float, required=True, help="learning rate that is stable without delay")
    _add_delay_arguments(p)
    _add_mitigation_arguments(p)
    p.set_defaults(func=cmd_lr)

    p = subparsers.add_parser(
        "threshold", help="alpha* = a*eta at the stability edge",
        description="The smallest alpha = a*eta (a: sharpness, the top Hessian eigenvalue) at which the "
                    "largest root of the characteristic equation reaches the unit circle; with --criterion "
                    "or --workers, the mean, mean-square or almost-sure edge of random staleness.")
    group = _add_delay_arguments(p)
    _add_random_arguments(p, group)
    _add_mitigation_arguments(p)
    p.set_defaults(func=cmd_threshold)

    p = subparsers.add_parser(
        "theory-table", help="write the tidy table of a theory figure (CSV)",
        description="Compute the exact table a theory figure reads. Figures and their options: "
                    + "; ".join(f"{name}: {', '.join(flags.values())}" for name, (_, flags) in TABLES.items())
                    + ". Defaults are the paper's ranges.")
    p.add_argument("figure", choices=list(TABLES), help="which figure's table")
    p.add_argument("--out", required=True, help="CSV file to write (atomically)")
    p.add_argument("--tau-max", dest="tau_max", type=int, help="largest constant delay (fig6, fig10, fig4a)")
    p.add_argument("--b-max", dest="b_max", type=int, help="largest b of unif{1, b} (fig7)")
    p.add_argument("--mu-max", dest="mu_max", type=int, help="largest Gaussian mean (fig8)")
    p.add_argument("--momenta", help="comma-separated momenta in (-1, 1) (fig10, fig4a)")
    p.add_argument("--qs", help="comma-separated geometric parameters q in [0, 1) (bridge)")
    p.set_defaults(func=cmd_theory_table)
