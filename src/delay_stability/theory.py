"""The exact stability edge of delayed (asynchronous) SGD.

Giladi et al., *At Stability's Edge*, ICLR 2020, sec. 2 and appendices B-D. Linearised around a
minimum x* with sharpness a = λmax(H), the expected dynamics of A-SGD along the top eigenvector is
a scalar linear recurrence; it is stable when every root of its characteristic polynomial lies
strictly inside the unit circle (Definition 1). With α = a·η, every equation treated here reads

    P(z) + α Q(z) = 0,                                                      (*)

with fixed polynomials P and Q:

=========  ===============  ========================================================================
variant    delay            characteristic equation (paper's equation)
=========  ===============  ========================================================================
plain      constant τ       z^{τ+1} − z^τ + α = 0                                          (eq. 4)
plain      P(τ = k) = p_k   z − 1 + α Σ_k p_k z^{−k} = 0, i.e. z^{K+1} − z^K + α Σ_k p_k z^{K−k} (eq. 19)
momentum   constant τ       z^{τ+1} − (1+m) z^τ + m z^{τ−1} + α(1−m) = 0  (times z when τ = 0) (eq. 26)
momentum   P(τ = k) = p_k   z^{K+2} − (1+m) z^{K+1} + m z^K + α(1−m) Σ_k p_k z^{K+1−k} = 0
shifted    constant τ       z^{τ+2} − z^{τ+1} + (α(1−m) − m) z + m = 0                   (eq. 11)
=========  ===============  ========================================================================

The *edge* α* is the smallest α > 0 at which the largest root modulus reaches 1. For α → 0+ every
root is strictly inside the unit circle: the roots of P are 0, m (or the (τ+1)-th roots of m) and a
simple root at z = 1, which moves inwards (z ≈ 1 − α) because Q(1)/P'(1) = 1 > 0 in every case.
So α* is the smallest positive α at which some root *lies on* the unit circle.

How α* is found (root locus). On z = e^{iθ}, (*) holds iff α(θ) = −P(e^{iθ})/Q(e^{iθ}) is real,
i.e. iff g(θ) = Im(P(e^{iθ}) · conj Q(e^{iθ})) = 0, and then α(θ) = −Re(P conj Q)/|Q|². With real
coefficients it suffices to look at θ ∈ (0, π]. g is a trigonometric polynomial of degree at most
n = deg P; we evaluate P and Q at ≥ 16(n+1) points of [0, π] with one real FFT each, and bracket
every sign change of h(θ) = g(θ)/sin θ, whose end values h(0) = g'(0) and h(π) = −g'(π) are exact
(so a crossing next to θ = 0, where the roots z = 1 and z ≈ m meet as m → 1, is not missed). α at
each bracket is bounded by its values at the two ends; only the brackets that can hold the minimum
are refined (brentq, to machine precision), and θ = π is evaluated exactly. The cost is O(n log n):
about 1.5 ms at τ = 1024, where the companion-matrix route costs O(n³) (seconds). A sign scan
cannot see two zeros of g closer than one grid step (a locus tangent to the circle); the tests
compare with the companion-matrix method over all variants, m up to 0.999 and random delays.

The companion-matrix method is kept as a check (``method="companion"``): the unit-circle roots of
the reciprocal polynomial R(z) = z^n [P(z) Q(1/z) − P(1/z) Q(z)] are exactly the zeros of g, and
``numpy.roots`` finds them as eigenvalues of R's companion matrix. ``spectral_radius`` always uses
``numpy.roots`` on P + αQ itself.

Closed forms (tested): plain, constant τ: α* = 2 sin(π/(4τ+2)) (eq. 6; appendix B drops the factor
2), so 1/α* ≈ (2τ+1)/π (eq. 7) and η ≈ π η0/(4(τ+0.5)) (eq. 8). Momentum at τ = 0 (heavy ball with
dampening): α* = 2(1+m)/(1−m). A geometric delay P(τ=k) = (1−q) q^k has Σ_k p_k z^{−k} =
(1−q) z/(z−q), so eq. 19 becomes (z−1)(z−q) + α(1−q) z = 0, the τ = 0 momentum-q equation: its edge
is 2(1+q)/(1−q) (the bridge to *Asynchrony begets Momentum*, where M workers give q = 1 − 1/M).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

VARIANTS = ("plain", "momentum", "shifted")
METHODS = ("auto", "locus", "companion")

#: Probabilities must sum to 1 within this tolerance.
PROB_SUM_TOL = 1e-9
#: geometric_delay truncates where the remaining tail mass falls below this, then renormalises.
GEOMETRIC_TAIL = 1e-12
#: Scan points of g on [0, π] per unit of polynomial degree (before rounding up to a power of 2).
GRID_PER_DEGREE = 16
#: A companion root counts as on the unit circle when | |z| − 1 | is below this.
UNIT_CIRCLE_TOL = 1e-6


# ------------------------------------------------------------------------------------------------
# 1. Input checking: delays, probabilities, momentum, variant
# ------------------------------------------------------------------------------------------------


def check_tau(tau, name="tau"):
    """A constant delay: a non-negative integer (an integer-valued float is accepted)."""
    if isinstance(tau, (bool, np.bool_)):
        raise ValueError(f"{name} must be a non-negative integer, got {tau!r}")
    if isinstance(tau, np.ndarray) and tau.ndim == 0:
        tau = tau.item()
    if isinstance(tau, Integral):
        tau = int(tau)
    elif isinstance(tau, Real) and math.isfinite(float(tau)) and float(tau).is_integer():
        tau = int(tau)
    else:
        raise ValueError(f"{name} must be a non-negative integer, got {tau!r}")
    if tau < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {tau}")
    return tau


def check_probabilities(probs, name="probabilities"):
    """Validate a delay distribution P(τ = k), k = 0..K: 1-D, finite, ≥ 0, summing to 1 (±1e-9).

    Returns a float array with trailing zeros removed (they only add roots at z = 0).
    """
    try:
        p = np.asarray(probs, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got {probs!r}") from None
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be finite")
    if np.any(p < 0):
        k = int(np.flatnonzero(p < 0)[0])
        raise ValueError(f"{name} must be non-negative, got P(tau={k}) = {p[k]:g}")
    total = float(p.sum())
    if abs(total - 1.0) > PROB_SUM_TOL:
        raise ValueError(f"{name} must sum to 1 (within {PROB_SUM_TOL:g}), got sum {total:.12g}")
    last = int(np.flatnonzero(p)[-1])
    return p[: last + 1].copy()


def _check_delay(delay):
    """A constant delay (int τ ≥ 0) or a distribution (1-D probabilities over k = 0..K)."""
    if isinstance(delay, (Integral, Real, np.bool_)) and not isinstance(delay, np.ndarray):
        return check_tau(delay)
    if isinstance(delay, np.ndarray) and delay.ndim == 0:
        return check_tau(delay)
    if isinstance(delay, (str, bytes)):
        raise ValueError(f"delay must be an integer tau or a sequence of probabilities, got {delay!r}")
    return check_probabilities(delay)


def check_momentum(momentum):
    """Momentum m: a real number in (−1, 1) (negative momentum: *Asynchrony begets Momentum*, sec. VI).

    For every variant the roots of P at α = 0 (0, 1, m, or the (τ+1)-th roots of m) stay inside or
    on the unit circle for |m| < 1, so the edge is defined as for m ≥ 0.
    """
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, Real):
        raise ValueError(f"momentum must be a number in (-1, 1), got {momentum!r}")
    m = float(momentum)
    if not (-1.0 < m < 1.0):
        raise ValueError(f"momentum must be in (-1, 1), got {momentum!r}")
    return m


def _check_variant(variant, momentum, delay):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if variant == "plain" and momentum != 0.0:
        raise ValueError(
            f"variant 'plain' has no momentum (got momentum={momentum:g}); "
            "use variant 'momentum' (server momentum, eq. 26) or 'shifted' (eq. 11)"
        )
    if variant == "shifted" and not isinstance(delay, int):
        raise ValueError("variant 'shifted' (eq. 11) is defined for a constant delay tau only, "
                         "not for a delay distribution")


def check_positive(value, name):
    """A finite real number > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------------------------
# 2. Delay distributions (appendix C)
# ------------------------------------------------------------------------------------------------


def uniform_delay(low, high):
    """τ ~ unif{low, ..., high}: P(τ = k) = 1/(high − low + 1) for low ≤ k ≤ high (eq. 20).

    Returns probabilities over k = 0..high. ``uniform_delay(k, k)`` is the constant delay k.
    """
    low = check_tau(low, "low")
    high = check_tau(high, "high")
    if high < low:
        raise ValueError(f"uniform delay needs low <= high, got low={low}, high={high}")
    p = np.zeros(high + 1)
    p[low:] = 1.0 / (high - low + 1)
    return p


def gaussian_delay(mean, std=1.0):
    """Appendix C's discretised Gaussian: P(τ = k) ∝ P(k − 0.5 ≤ z ≤ k + 0.5), z ~ N(μ, σ²),
    for k = 1..2μ (σ = 1 in the paper), renormalised to sum to 1.

    For a non-integer μ the support is k = 1..⌊2μ⌋. Note E[τ] is not exactly μ for small μ: the
    support 1..2μ is centred on μ + 1/2 (``mean_delay`` gives the exact mean).
    """
    mu = check_positive(mean, "mean")
    sigma = check_positive(std, "std")
    top = int(math.floor(2 * mu + 1e-12))
    if top < 1:
        raise ValueError(f"gaussian delay needs mean >= 0.5 (support k = 1..2*mean), got {mean!r}")
    k = np.arange(1, top + 1)
    from scipy.special import ndtr  # imported where needed: closed forms answer without scipy

    mass = ndtr((k + 0.5 - mu) / sigma) - ndtr((k - 0.5 - mu) / sigma)
    p = np.zeros(top + 1)
    p[1:] = mass / mass.sum()
    return p


def geometric_delay(q, tail=GEOMETRIC_TAIL):
    """Geometric staleness P(τ = k) = (1 − q) q^k, k = 0..K, where K is the first index with tail
    mass Σ_{k>K} p_k = q^{K+1} below ``tail`` (1e-12), renormalised.

    Its expected dynamics (eq. 19) equal those of server momentum q with dampening at τ = 0.
    """
    if isinstance(q, (bool, np.bool_)) or not isinstance(q, Real) or not (0.0 <= float(q) < 1.0):
        raise ValueError(f"geometric delay parameter q must be in [0, 1), got {q!r}")
    q = float(q)
    tail = check_positive(tail, "tail")
    if q == 0.0:
        return np.array([1.0])
    K = max(0, math.ceil(math.log(tail) / math.log(q)) - 1)
    while q ** (K + 1) >= tail:
        K += 1
    p = (1.0 - q) * q ** np.arange(K + 1)
    return p / p.sum()


def mean_delay(probs):
    """E[τ] = Σ_k k p_k of a delay distribution (or τ itself for a constant delay)."""
    delay = _check_delay(probs)
    if isinstance(delay, int):
        return float(delay)
    return float(np.dot(np.arange(delay.size), delay))


# ------------------------------------------------------------------------------------------------
# 3. Characteristic polynomials P(z) + α Q(z)
# ------------------------------------------------------------------------------------------------


def characteristic_polynomial(delay, momentum=0.0, variant="plain"):
    """The characteristic equation P(z) + α Q(z) = 0 of the linearised A-SGD dynamics.

    Returns ``(P, Q)``: float arrays of equal length n + 1, coefficients in *descending* powers
    (``numpy.roots`` / ``numpy.polyval`` order), P monic of degree n.

    - plain, constant τ (eq. 4):       P = z^{τ+1} − z^τ,                  Q = 1
    - plain, distribution p (eq. 19):  P = z^{K+1} − z^K,                  Q = Σ_k p_k z^{K−k}
    - momentum, constant τ ≥ 1 (eq. 26): P = z^{τ+1} − (1+m) z^τ + m z^{τ−1}, Q = 1 − m
      (τ = 0: both multiplied by z, P = z² − (1+m) z + m, Q = (1 − m) z)
    - momentum, distribution p:        P = z^{K+2} − (1+m) z^{K+1} + m z^K, Q = (1−m) Σ_k p_k z^{K+1−k}
    - shifted, constant τ (eq. 11):    P = z^{τ+2} − z^{τ+1} − m z + m,    Q = (1 − m) z
    """
    delay = _check_delay(delay)
    m = check_momentum(momentum)
    _check_variant(variant, m, delay)
    if variant == "plain":
        return _plain_polynomial(delay)
    if variant == "momentum":
        return _momentum_polynomial(delay, m)
    return _shifted_polynomial(delay, m)


def _plain_polynomial(delay):
    if isinstance(delay, int):  # eq. 4
        P, Q = np.zeros(delay + 2), np.zeros(delay + 2)
        P[:2] = 1.0, -1.0
        Q[-1] = 1.0
        return P, Q
    K = delay.size - 1  # eq. 19 times z^K
    P, Q = np.zeros(K + 2), np.zeros(K + 2)
    P[:2] = 1.0, -1.0
    Q[1:] = delay
    return P, Q


def _momentum_polynomial(delay, m):
    if isinstance(delay, int) and delay >= 1:  # eq. 26
        P, Q = np.zeros(delay + 2), np.zeros(delay + 2)
        P[:3] = 1.0, -(1.0 + m), m
        Q[-1] = 1.0 - m
        return P, Q
    probs = np.array([1.0]) if isinstance(delay, int) else delay  # τ = 0: eq. 26 times z
    K = probs.size - 1
    P, Q = np.zeros(K + 3), np.zeros(K + 3)
    P[:3] = 1.0, -(1.0 + m), m
    Q[1 : K + 2] = (1.0 - m) * probs
    return P, Q


def _shifted_polynomial(tau, m):  # eq. 11
    P, Q = np.zeros(tau + 3), np.zeros(tau + 3)
    P[:2] = 1.0, -1.0
    P[-2] += -m
    P[-1] += m
    Q[-2] = 1.0 - m
    return P, Q


# ------------------------------------------------------------------------------------------------
# 4. The edge: root locus on the unit circle (fast, exact) and the companion-matrix check
# ------------------------------------------------------------------------------------------------


class _UnitCircle:
    """P and Q on z = e^{iθ}: g(θ) = Im(P conj Q), h(θ) = g(θ)/sin θ and α(θ) = −Re(P conj Q)/|Q|².

    With real coefficients g is odd about θ = 0 and θ = π, so h is smooth on [0, π] with
    h(0) = g'(0) = P'(1) Q(1) − P(1) Q'(1) and h(π) = −g'(π) = P(−1) S_Q − S_P Q(−1), where
    S_P = Σ_n n a_n (−1)^n for P = Σ_n a_n z^n. The zeros of h on [0, π] are those of g on (0, π).
    Only the non-zero coefficients are kept: a constant delay costs O(1) per evaluation.
    """

    def __init__(self, P, Q):
        coef = np.vstack([P[::-1], Q[::-1]])  # ascending powers
        support = np.flatnonzero(np.any(coef != 0, axis=0))  # sparse for a constant delay
        self.coef, self.powers = coef[:, support], support.astype(float)
        signs = (-1.0) ** self.powers
        (p1, q1), (dp1, dq1) = self.coef.sum(axis=1), self.coef @ self.powers
        (pm, qm), (sp, sq) = self.coef @ signs, self.coef @ (self.powers * signs)
        self.h_at_0 = dp1 * q1 - p1 * dq1
        self.h_at_pi = pm * sq - sp * qm

    def values(self, theta):
        p, q = self.coef @ np.exp(1j * theta * self.powers)
        return p, q

    def g(self, theta):
        p, q = self.values(theta)
        return (p * q.conjugate()).imag

    def h(self, theta):
        if theta <= 0.0:
            return self.h_at_0
        if theta >= math.pi:
            return self.h_at_pi
        return self.g(theta) / math.sin(theta)

    def alpha(self, theta):
        p, q = self.values(theta)
        return -(p * q.conjugate()).real / abs(q) ** 2

    def g_and_slope(self, theta):
        """g(θ) and g'(θ), with d/dθ P(e^{iθ}) = i Σ_n n a_n e^{iθn}."""
        z = np.exp(1j * theta * self.powers)
        p, q = self.coef @ z
        dp, dq = (self.coef * (1j * self.powers)) @ z
        return (p * q.conjugate()).imag, (dp * q.conjugate() + p * dq.conjugate()).imag


def _alpha_at_minus_one(P, Q):
    """α at z = −1 (θ = π), where (*) is real: α = −P(−1)/Q(−1); None if Q(−1) = 0."""
    signs = (-1.0) ** np.arange(P.size)[::-1]
    p, q = float(P @ signs), float(Q @ signs)
    if abs(q) <= 1e-14 * float(np.abs(Q).sum()):
        return None
    return -p / q


def _scan_grid(P, Q):
    """P(e^{iθ_j}), Q(e^{iθ_j}) on θ_j = π j / N, j = 0..N, by one real FFT of each coefficient list.

    rfft(a)_j = Σ_n a_n e^{−iθ_j n} = conj P(e^{iθ_j}) for real ascending coefficients a.
    N is a power of 2 with N ≥ GRID_PER_DEGREE · (n + 1).
    """
    degree = P.size - 1
    N = 1 << max(6, int(math.ceil(math.log2(GRID_PER_DEGREE * (degree + 1)))))
    p = np.fft.rfft(P[::-1], 2 * N).conj()
    q = np.fft.rfft(Q[::-1], 2 * N).conj()
    theta = np.pi * np.arange(N + 1) / N
    return theta, p, q


def _zero_in_bracket(f, lo, hi):
    """The zero of f in [lo, hi] to machine precision (brentq). The scan saw a sign change; if
    the direct evaluation disagrees, f vanishes at an end up to rounding, and that end is the zero."""
    f_lo, f_hi = f(lo), f(hi)
    if f_lo == 0.0 or f_hi == 0.0 or (f_lo > 0) == (f_hi > 0):
        return lo if abs(f_lo) <= abs(f_hi) else hi
    from scipy.optimize import brentq

    return brentq(f, lo, hi, xtol=1e-300, maxiter=200)


def _edge_by_root_locus(P, Q):
    """Smallest α > 0 with a root on the unit circle, by the root locus α(θ) = −P/Q on z = e^{iθ}.

    1. Scan h(θ) = Im(P conj Q)/sin θ on a dense grid of [0, π] (one FFT each for P and Q; exact
       end values), and bracket its sign changes: every zero of g = Im(P conj Q) in (0, π).
    2. Bound α at each bracket's zero by its end values: [min − spread, max + spread], spread =
       |α(θ_a) − α(θ_b)|. Brackets whose upper bound is ≤ 0 cannot give a positive α.
    3. Refine brackets in order of their lower bound (brentq to machine precision) while the lower
       bound is below the best α found; θ = π (z = −1) is evaluated exactly.
    """
    theta, p, q = _scan_grid(P, Q)
    circle = _UnitCircle(P, Q)
    cross = p * q.conj()
    h = np.empty_like(theta)
    h[1:-1] = cross.imag[1:-1] / np.sin(theta[1:-1])
    h[0], h[-1] = circle.h_at_0, circle.h_at_pi
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha_grid = -cross.real / np.abs(q) ** 2

    best = _alpha_at_minus_one(P, Q)
    best = best if best is not None and best > 0 else math.inf

    for j in np.flatnonzero(h[1:-1] == 0.0) + 1:  # zeros that fall on a grid point
        a = circle.alpha(theta[j])
        if 0 < a < best:
            best = a

    left = np.flatnonzero(h[:-1] * h[1:] < 0)  # bracket [θ_j, θ_{j+1}] for j in left
    a_lo, a_hi = alpha_grid[left], alpha_grid[left + 1]
    with np.errstate(invalid="ignore"):
        spread = np.abs(a_hi - a_lo)
        lower = np.fmin(a_lo, a_hi) - spread
        upper = np.fmax(a_lo, a_hi) + spread
    lower = np.where(np.isfinite(lower), lower, -math.inf)
    upper = np.where(np.isfinite(upper), upper, math.inf)
    keep = upper > 0
    left, lower = left[keep], lower[keep]
    for i in np.argsort(lower, kind="stable"):
        if lower[i] >= best:
            break
        j = left[i]
        root = _zero_in_bracket(circle.h, theta[j], theta[j + 1])
        if 0.0 < root < math.pi:
            a = circle.alpha(root)
            if 0 < a < best:
                best = a
    if not math.isfinite(best):
        raise RuntimeError("no positive alpha puts a root on the unit circle")
    return float(best)


def _edge_by_companion(P, Q):
    """Smallest α > 0 with a root on the unit circle, from the eigenvalues of a companion matrix.

    On |z| = 1, Q(1/z) = conj Q(z), so the unit-circle roots of the reciprocal polynomial
    R(z) = z^n [P(z) Q(1/z) − P(1/z) Q(z)] are the zeros of g(θ) = Im(P conj Q). ``numpy.roots``
    (eigenvalues of R's companion matrix, O(n³)) finds them; each θ is polished by two Newton
    steps on g, and α(θ) = −Re(P conj Q)/|Q|² is kept when positive.
    """
    R = np.convolve(P, Q[::-1]) - np.convolve(P[::-1], Q)
    roots = np.roots(R)
    on_circle = roots[np.abs(np.abs(roots) - 1.0) < UNIT_CIRCLE_TOL]
    thetas = np.abs(np.angle(on_circle))
    circle = _UnitCircle(P, Q)
    best = math.inf
    for theta in thetas:
        if theta < 1e-9:  # z = 1: α = 0, the root that leaves the circle inwards
            continue
        for _ in range(2):
            value, slope = circle.g_and_slope(theta)
            if slope != 0:
                theta = theta - value / slope
        a = circle.alpha(theta)
        if 0 < a < best:
            best = a
    minus_one = _alpha_at_minus_one(P, Q)
    if minus_one is not None and 0 < minus_one < best:
        best = minus_one
    if not math.isfinite(best):
        raise RuntimeError("no positive alpha puts a root on the unit circle")
    return float(best)


def closed_form_alpha(delay, momentum=0.0, variant="plain"):
    """The edge in closed form where one exists, else None: 2 sin(π/(4τ+2)) for plain A-SGD with a
    constant delay τ (eq. 6), 2(1+m)/(1−m) for server momentum without delay (τ = 0, eq. 26)."""
    if isinstance(delay, (bool, np.bool_)) or not isinstance(delay, (int, np.integer)) or delay < 0:
        return None
    if variant == "plain" and momentum == 0:
        return 2.0 * math.sin(math.pi / (4 * int(delay) + 2))
    if variant == "momentum" and delay == 0 and -1 < momentum < 1:
        return 2.0 * (1.0 + momentum) / (1.0 - momentum)
    return None


def critical_alpha(delay, momentum=0.0, variant="plain", *, method="auto"):
    """The stability edge α* = a·η: the smallest α > 0 at which the largest root of the
    characteristic equation P(z) + α Q(z) = 0 reaches the unit circle.

    ``delay``: an int τ ≥ 0 (constant delay; eq. 4, eq. 26, eq. 11) or a 1-D sequence of
    probabilities P(τ = k), k = 0..K (stochastic delay; eq. 19, and eq. 26 averaged over τ).
    ``variant``: "plain" (no momentum), "momentum" (server momentum m with dampening, eq. 9/22),
    "shifted" (shifted momentum, eq. 10, constant delay only). ``method``: "auto" (the closed form
    where one exists, ``closed_form_alpha``; else the root locus; the default), "locus" (root locus
    on the unit circle, O(n log n)) or "companion" (companion-matrix eigenvalues, O(n³)).
    Exact to ~1e-12 relative; closed forms: 2 sin(π/(4τ+2)) (eq. 6) and 2(1+m)/(1−m) at τ = 0.
    """
    P, Q = characteristic_polynomial(delay, momentum, variant)  # validates the arguments
    if method == "auto":
        closed = closed_form_alpha(delay, momentum, variant)
        if closed is not None:
            return closed
        method = "locus"
    if method == "locus":
        return _edge_by_root_locus(P, Q)
    if method == "companion":
        return _edge_by_companion(P, Q)
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def spectral_radius(alpha, delay, momentum=0.0, variant="plain"):
    """max |z| over the roots of P(z) + α Q(z) (``numpy.roots``, i.e. companion-matrix eigenvalues).

    The dynamics at α = a·η are stable iff this is < 1 (Definition 1).
    """
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, Real) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite real number, got {alpha!r}")
    P, Q = characteristic_polynomial(delay, momentum, variant)
    return float(np.max(np.abs(np.roots(P + float(alpha) * Q))))


# ------------------------------------------------------------------------------------------------
# 5. Learning rates and closed forms
# ------------------------------------------------------------------------------------------------


def eq6_alpha(tau):
    """Plain A-SGD, constant delay: α* = 2 sin(π/(4τ+2)) (eq. 6)."""
    tau = check_tau(tau)
    return 2.0 * math.sin(math.pi / (4 * tau + 2))


def eq7_inv_alpha(tau):
    """The linear approximation 1/α* ≈ (2τ+1)/π (eq. 7); τ may be a mean delay E[τ] ≥ 0."""
    if isinstance(tau, (bool, np.bool_)) or not isinstance(tau, Real) or not tau >= 0:
        raise ValueError(f"tau must be a non-negative number, got {tau!r}")
    return (2.0 * float(tau) + 1.0) / math.pi


def momentum_alpha_tau0(momentum):
    """Server momentum with dampening at τ = 0 (heavy ball): α* = 2(1+m)/(1−m)."""
    m = check_momentum(momentum)
    return 2.0 * (1.0 + m) / (1.0 - m)


def recommended_lr(eta0, tau, momentum=0.0, variant="plain"):
    """The learning rate that keeps the minima that were stable at τ = 0 with η0 stable at delay τ:

        η = η0 · α*(τ) / α*(0),

    exact from the characteristic equation (eq. 4 / 19 / 26 / 11). ``tau`` is an int or a delay
    distribution; α*(0) is the edge of the same variant and momentum without delay.
    """
    eta0 = check_positive(eta0, "eta0")
    return eta0 * critical_alpha(tau, momentum, variant) / critical_alpha(0, momentum, variant)


def eq8_lr(eta0, tau):
    """The paper's rule η ≈ π η0 / (4(τ + 0.5)) (eq. 8); τ may be a mean delay E[τ] ≥ 0."""
    eta0 = check_positive(eta0, "eta0")
    if isinstance(tau, (bool, np.bool_)) or not isinstance(tau, Real) or not tau >= 0:
        raise ValueError(f"tau must be a non-negative number, got {tau!r}")
    return math.pi * eta0 / (4.0 * (float(tau) + 0.5))


# ------------------------------------------------------------------------------------------------
# 6. Delay mitigations: their linearised dynamics and stability edges (beyond the paper)
# ------------------------------------------------------------------------------------------------
#
# Each published rule below changes the update w ← w − η g_s (g_s = g(w_{t−τ})) of plain delayed SGD.
# Linearised at a minimum of sharpness a under a constant delay τ (round robin), rules 1-4 give a
# characteristic equation P(z) + α Q(z) = 0 in the same form (*) as above, with α = a·η for the
# *base* step η the user sets, so that every edge compares directly with plain A-SGD's 2 sin(π/(4τ+2)).
# The same root-locus machinery gives the edge. Gap-aware (rule 5) is homogeneous of degree one in the
# distance to the minimum (no linearisation exists): its edge is found numerically on the scalar
# recurrence (``gap_aware_alpha``). Each rule is written as its paper states the update; equation
# numbers are not given (they were not checked against the papers' full texts).

MITIGATIONS = ("staleness-aware", "delay-adaptive", "delay-adaptive-threshold", "dc-asgd-c", "dc-asgd-a",
               "spike-compensation", "weight-prediction", "gap-aware")

#: Hyperparameters of each rule and their defaults (the papers' published values where they have one).
#: ``workers``/``tau_c`` None: the number of in-flight workers (τ + 1 under round robin); ``smoothness``
#: None: the sharpness a of the minimum. ``c`` (DC-ASGD only) is the theory's noise parameter
#: c = λ·E[g²]/a of the linearisation, not an optimizer setting (0 at a full-batch minimum).
MITIGATION_DEFAULTS = {
    "staleness-aware": {},
    "delay-adaptive": {"workers": None},
    "delay-adaptive-threshold": {"tau_c": None, "smoothness": None},
    "dc-asgd-c": {"lambda0": 0.04},
    "dc-asgd-a": {"lambda0": 2.0, "ms_decay": 0.95, "ms_eps": 1e-7},
    "spike-compensation": {"beta": 0.9},
    "weight-prediction": {"beta": 0.9},
    "gap-aware": {"ema": 0.999, "eps": 1e-8},
}


def check_mitigation(name, hyperparameters=None):
    """(name, hyperparameters with defaults) of a mitigation rule; a clear ValueError for an unknown
    name, an unknown hyperparameter or a value out of range."""
    if name not in MITIGATIONS:
        raise ValueError(f"mitigation must be one of {', '.join(MITIGATIONS)}; got {name!r}")
    given = dict(hyperparameters or {})
    unknown = sorted(set(given) - set(MITIGATION_DEFAULTS[name]))
    if unknown:
        allowed = ", ".join(MITIGATION_DEFAULTS[name]) or "none"
        raise ValueError(f"mitigation {name!r} has no hyperparameter {unknown[0]!r} (it takes: {allowed})")
    hp = {**MITIGATION_DEFAULTS[name], **given}
    for key, value in hp.items():
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"mitigation {name!r}: {key} must be a finite number, got {value!r}")
        if key in ("beta", "ms_decay", "ema") and not 0.0 <= float(value) < 1.0:
            raise ValueError(f"mitigation {name!r}: {key} must be in [0, 1), got {value!r}")
        if key in ("workers",) and (float(value) < 1 or not float(value).is_integer()):
            raise ValueError(f"mitigation {name!r}: {key} must be an integer >= 1, got {value!r}")
        if key == "tau_c" and (float(value) < 0 or not float(value).is_integer()):
            raise ValueError(f"mitigation {name!r}: tau_c must be an integer >= 0, got {value!r}")
        if key in ("smoothness", "ms_eps") and not float(value) > 0:
            raise ValueError(f"mitigation {name!r}: {key} must be > 0, got {value!r}")
        if key in ("lambda0", "eps") and float(value) < 0:
            raise ValueError(f"mitigation {name!r}: {key} must be >= 0, got {value!r}")
    return name, hp


def step_scale(name, tau, hyperparameters=None, sharpness=1.0, lr=None):
    """The factor s(τ) with η_t = s·η for the rules that only rescale the step (1 and 2):

    - staleness-aware (Zhang, Gupta, Lian, Liu, IJCAI 2016, arXiv:1511.05950, the staleness-dependent
      learning rate α/τ): s = 1/max(1, τ);
    - delay-adaptive (Mishchenko, Bach, Even, Woodworth, NeurIPS 2022, arXiv:2206.07638, the
      delay-adaptive stepsize): s = n/max(n, τ), n the number of workers
      (default τ + 1: the round-robin workers, where the rule never fires);
    - delay-adaptive-threshold (Koloskova, Stich, Jaggi, NeurIPS 2022, arXiv:2206.08307, their
      delay-adaptive rule): η_t = η if τ ≤ τ_C, else min(η, 1/(4 L τ)); with ``lr`` given,
      s = η_t/η (L = ``smoothness``, default the sharpness a; τ_C default τ + 1 = n).
    """
    name, hp = check_mitigation(name, hyperparameters)
    tau = check_tau(tau)
    if name == "staleness-aware":
        return 1.0 / max(1, tau)
    if name == "delay-adaptive":
        n = tau + 1 if hp["workers"] is None else int(hp["workers"])
        return n / max(n, tau)
    if name == "delay-adaptive-threshold":
        tau_c = tau + 1 if hp["tau_c"] is None else int(hp["tau_c"])
        if tau <= tau_c:
            return 1.0
        L = float(sharpness) if hp["smoothness"] is None else float(hp["smoothness"])
        if lr is None:
            raise ValueError("delay-adaptive-threshold: the step scale min(eta, 1/(4 L tau))/eta needs lr")
        return min(float(lr), 1.0 / (4.0 * L * tau)) / float(lr)
    raise ValueError(f"{name!r} does not only rescale the step")


def dc_polynomial(tau, c=0.0):
    """DC-ASGD linearised (Zheng et al., ICML 2017, arXiv:1609.08326, the delay-compensated gradient
    g_s + λ g_s ⊙ g_s ⊙ (w_t − w_s); constant λ = DC-ASGD-c, adaptive λ_t = DC-ASGD-a).

    At a full-batch minimum g_s = a w_s, so the correction λ a² w_s² (w_t − w_s) is cubic in the
    distance: the linearisation is plain A-SGD (c = 0) whatever λ. With minibatch noise, E[g_s²] stays
    positive at the minimum; replacing g_s ⊙ g_s by its mean (the noise model: independent of the
    distance) gives the linear recurrence w_{t+1} = w_t − α w_{t−τ} − α c (w_t − w_{t−τ}) with
    c = λ·E[g²]/a, i.e.

        z^{τ+1} − z^τ + α (c z^τ + 1 − c) = 0.

    c = 1 removes the delay exactly (z^τ (z − 1 + α) = 0: edge 2); c = 0 is eq. 4.
    """
    tau = check_tau(tau)
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, Real) or not math.isfinite(c):
        raise ValueError(f"c must be a finite number, got {c!r}")
    P, Q = _plain_polynomial(tau)
    Q = Q.copy()
    Q[-1] = 1.0 - float(c)
    Q[1] += float(c)  # c z^τ (τ = 0: Q = 1 either way)
    if tau == 0:
        Q[:] = 0.0
        Q[-1] = 1.0
    return P, Q


def momentum_lookahead_polynomial(tau, beta, form="spike-compensation"):
    """Spike Compensation and the DANA-style weight prediction, linearised (both with plain momentum
    v ← β v + g, no dampening, and w ← w − η·(update)).

    - spike-compensation (Kosson et al., MLSys 2021, arXiv:2003.11666, their Spike Compensation with
      a = β^τ, b = (1 − β^τ)/(1 − β)): v_{t+1} = β v_t + g_{t−τ}, w_{t+1} = w_t − η (a v_{t+1} + b g_{t−τ}).
      Eliminating v: (z − 1) z^τ (z − β) + α [β^τ z + b (z − β)] = 0, i.e.
          P = z^{τ+2} − (1+β) z^{τ+1} + β z^τ,   Q = ((1 − β^{τ+1})/(1 − β)) z − β (1 − β^τ)/(1 − β).
    - weight-prediction (the DANA look-ahead of Hakimi et al. 2019, as in Kosson et al.'s Linear Weight
      Prediction): the gradient is taken at ŵ_s = w_s − η k v_s, k = (β − β^{τ+1})/(1 − β), and
      v_{t+1} = β v_t + g(ŵ_{t−τ}), w_{t+1} = w_t − η v_{t+1}. Eliminating v (η z V = −(z − 1) W):
          (z − 1)(z − β) z^τ + α [(1 + k) z − k] = 0,
      and 1 + k = (1 − β^{τ+1})/(1 − β), k = β(1 − β^τ)/(1 − β): *the same polynomial*. The two
      rules have identical linear dynamics at every τ and β (they differ off the quadratic: one
      extrapolates the update, the other the point where the gradient is taken).
    At τ = 0 both are heavy ball without dampening: edge α* = 2(1 + β).
    """
    tau = check_tau(tau)
    if isinstance(beta, (bool, np.bool_)) or not isinstance(beta, Real) or not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    b = float(beta)
    P, Q = np.zeros(tau + 3), np.zeros(tau + 3)
    P[:3] = 1.0, -(1.0 + b), b
    if form == "spike-compensation":
        a_sc, b_sc = b**tau, (1.0 - b**tau) / (1.0 - b)
        Q[-2], Q[-1] = a_sc + b_sc, -b * b_sc
    elif form == "weight-prediction":
        k = (b - b ** (tau + 1)) / (1.0 - b)
        Q[-2], Q[-1] = 1.0 + k, -k
    else:
        raise ValueError(f"form must be 'spike-compensation' or 'weight-prediction', got {form!r}")
    return P, Q


def mitigation_polynomial(name, tau, hyperparameters=None, c=0.0, lr=None, sharpness=1.0):
    """P(z) + α Q(z) = 0 of a mitigation rule linearised at a minimum, constant delay τ, α = a·η with
    η the base step (see ``step_scale``, ``dc_polynomial``, ``momentum_lookahead_polynomial``).

    ``c``: the DC-ASGD noise parameter λ·E[g²]/a (0 at a full-batch minimum). Gap-aware has no
    linearisation (ValueError: use ``gap_aware_alpha``).
    """
    name, hp = check_mitigation(name, hyperparameters)
    tau = check_tau(tau)
    if name in ("staleness-aware", "delay-adaptive", "delay-adaptive-threshold"):
        P, Q = _plain_polynomial(tau)
        return P, Q * step_scale(name, tau, hp, sharpness=sharpness, lr=lr)
    if name in ("dc-asgd-c", "dc-asgd-a"):
        return dc_polynomial(tau, c)
    if name in ("spike-compensation", "weight-prediction"):
        return momentum_lookahead_polynomial(tau, hp["beta"], form=name)
    raise ValueError("gap-aware is homogeneous of degree 1 (no linearisation): use gap_aware_alpha")


def mitigation_is_exact(name, c=0.0):
    """True where the edge is an exact linearisation at a full-batch minimum: every rule but gap-aware
    (found numerically on the scalar recurrence) and DC-ASGD with noise c ≠ 0 (a mean-field model)."""
    check_mitigation(name)
    if name == "gap-aware":
        return False
    if name in ("dc-asgd-c", "dc-asgd-a"):
        return float(c) == 0.0
    return True


def mitigation_alpha(name, tau, hyperparameters=None, *, c=0.0, method="locus", sharpness=1.0):
    """The edge α* = a·η of a mitigation rule at constant delay τ, in units of the base step η.

    ``math.inf`` when no base step leaves the minimum (delay-adaptive-threshold past τ_C caps the step
    at 1/(4 L τ), inside plain A-SGD's edge whenever L ≥ a). Gap-aware: ``gap_aware_alpha``.
    Closed form (tested): staleness-aware, α* = max(1, τ)·2 sin(π/(4τ+2)) → π/2 as τ → ∞.
    """
    name, hp = check_mitigation(name, hyperparameters)
    tau = check_tau(tau)
    if name == "gap-aware":
        return gap_aware_alpha(tau, hp)
    if name == "delay-adaptive-threshold":
        tau_c = tau + 1 if hp["tau_c"] is None else int(hp["tau_c"])
        plain = _edge(*_plain_polynomial(tau), method)
        if tau <= tau_c:
            return plain
        L = float(sharpness) if hp["smoothness"] is None else float(hp["smoothness"])
        cap = float(sharpness) / (4.0 * L * tau)  # a·min(η, 1/(4Lτ)) ≤ cap for every η
        return math.inf if cap < plain else plain
    return _edge(*mitigation_polynomial(name, tau, hp, c=c), method)


def _edge(P, Q, method):
    if method in ("auto", "locus"):  # no closed form here: "auto" is the root locus
        return _edge_by_root_locus(P, Q)
    if method == "companion":
        return _edge_by_companion(P, Q)
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def gap_aware_recurrence(alpha, tau, steps, hyperparameters=None, w0=1.0):
    """The scalar gap-aware recurrence on f(w) = a w²/2 (Barkai, Hakimi, Schuster, ICLR 2020,
    arXiv:1909.10802, their Gap-aware penalty), in units α = a·η, u = a·w:

        g_t = u_{t−τ} (the stale gradient, u_s = u_0 for s < 0),
        v_t = β v_{t−1} + (1 − β) g_t²,  v̂_t = v_t/(1 − β^{t+1})  (Adam's bias correction),
        G_t = |u_t − u_{t−τ}| / (τ·α·(√v̂_t + ε))   (G = 0 at τ = 0),
        u_{t+1} = u_t − α g_t / (1 + G_t).

    With ε = 0 the map is homogeneous of degree 1: scaling u_0 scales the whole trajectory, so
    stability does not depend on the kick's size. Returns |u_t|, t = 0..steps (float64; inf from the
    first non-finite value on). Past the linear edge the penalty adapts (v̂ tracks the growing gradients
    over ~1/(1 − β) steps), so growth is slow and the numerical edge depends on the horizon.
    """
    _, hp = check_mitigation("gap-aware", hyperparameters)
    tau = check_tau(tau)
    beta, eps = hp["ema"], hp["eps"]
    u = [float(w0)]
    v = 0.0
    out = np.empty(steps + 1)
    out[0] = abs(u[0])
    for t in range(steps):
        g = u[max(t - tau, 0)]
        v = beta * v + (1.0 - beta) * g * g
        vhat = v / (1.0 - beta ** (t + 1))
        gap = 0.0 if tau == 0 else abs(u[t] - u[max(t - tau, 0)]) / (tau * alpha * (math.sqrt(vhat) + eps))
        u.append(u[t] - alpha * g / (1.0 + gap))
        out[t + 1] = abs(u[-1])
        if not math.isfinite(out[t + 1]):  # overflow (inf, or nan from inf - inf): diverged
            out[t + 1:] = math.inf
            break
    return out


def gap_aware_alpha(tau, hyperparameters=None, *, steps=None, growth=3.0, rel_tol=1e-3, alpha_max=64.0):
    """Gap-aware's edge, found numerically (no linearisation exists): the largest α at which the
    scalar recurrence (``gap_aware_recurrence``, ε = 0, u_0 = 1) does not grow ``growth``-fold within
    ``steps`` (default 400 + 200 τ) steps, by bisection on log α to ``rel_tol``. ``math.inf`` if even
    ``alpha_max`` stays. Not an exact edge: it depends on the horizon and the growth criterion, like
    a measured one (the pipeline's searches pass their own budget and growth)."""
    _, hp = check_mitigation("gap-aware", hyperparameters)
    hp = {**hp, "eps": 0.0}
    tau = check_tau(tau)
    steps = 400 + 200 * tau if steps is None else int(steps)

    def left(alpha):
        return bool(np.max(gap_aware_recurrence(alpha, tau, steps, hp)) > growth)

    if not left(alpha_max):
        return math.inf
    lo, hi = alpha_max, alpha_max
    while left(lo):
        lo /= 2.0
        if lo < 1e-6:
            raise RuntimeError("gap-aware: every alpha grows")
    hi = 2.0 * lo
    while hi / lo - 1.0 > rel_tol:
        mid = math.sqrt(lo * hi)
        if left(mid):
            hi = mid
        else:
            lo = mid
    return float(lo)


# ------------------------------------------------------------------------------------------------
# 7. Asynchrony begets momentum (Mitliagkas, Zhang, Hadjis, Ré, Allerton 2016)
# ------------------------------------------------------------------------------------------------
#
# Polyak momentum μ_L with stale gradients, w_{t+1} = w_t + μ_L (w_t − w_{t−1}) − α ∇f(w_{t−τ_t})
# (their eq. 16), and geometric staleness P(τ = l) = (1 − μ_S) μ_S^l (Theorem 3; M workers with
# exponential work times give μ_S = 1 − 1/M, Theorem 5). The expected iterates obey (Theorem 6,
# eq. 9 / appendix eq. 19)
#
#     E w_{t+1} = (1 + μ_S + μ_L) E w_t − (μ_S + μ_L + μ_S μ_L) E w_{t−1} + μ_S μ_L E w_{t−2}
#                 − α (1 − μ_S) E ∇f(w_t),
#
# and on f = ½‖Aw − b‖² each eigendirection λ_i of AᵀA decays like γ_i^t, γ_i = 1/|t_i*| with t_i*
# the smallest root of g_i(t) = μ_S μ_L t³ − (μ_S + μ_L + μ_S μ_L) t² + z_i t − 1,
# z_i = 1 + μ_S + μ_L − α (1 − μ_S) λ_i (Theorem 7, eq. 10–12). With x = 1/t the roots are those of
#
#     x³ − z_i x² + (μ_S + μ_L + μ_S μ_L) x − μ_S μ_L = 0,                                 (†)
#
# so γ = max_i max |x| over the roots of (†). (†) is (x − 1)(x − μ_L)(x − μ_S) + α(1 − μ_S) λ x² = 0:
# with α = a η (1 − μ_L) it is the characteristic equation of server momentum μ_L with dampening
# under geometric delay (eq. 19 with momentum, ``characteristic_polynomial(geometric_delay(μ_S),
# μ_L, "momentum")`` without the truncation), whose edge ``geometric_momentum_edge`` gives.
#
# Step conventions: ``alpha`` here is the step that multiplies the stale gradient (the paper's α).
# ``DelayedSGD`` with dampening multiplies it by (1 − m): α = η (1 − μ_L); without, α = η.
#
# Initial history (what ``DelayedSGD(schedule="random")`` does: every worker starts from w_0): the
# expected recurrence holds for t ≥ 1 with E w_0 = w_0, E w_1 = w_0 − α ∇f(w_0) and E w_{−1} = w_0.

#: Grid sizes of optimal_momentum's global search before its local refinement.
OPTIMAL_MU_POINTS = 67
OPTIMAL_ALPHA_POINTS = 61


def check_implicit_momentum(mu_s):
    """Implicit momentum μ_S = 1 − 1/M of geometric staleness: a real number in [0, 1)."""
    if isinstance(mu_s, (bool, np.bool_)) or not isinstance(mu_s, Real) or not (0.0 <= float(mu_s) < 1.0):
        raise ValueError(f"implicit momentum mu_s must be in [0, 1), got {mu_s!r}")
    return float(mu_s)


def implicit_momentum(workers):
    """μ_S = 1 − 1/M: the momentum M asynchronous workers add (Theorem 5)."""
    if isinstance(workers, (bool, np.bool_)) or not isinstance(workers, Integral) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return 1.0 - 1.0 / int(workers)


def corrected_momentum(mu_star, workers, lower=-0.9, upper=0.9):
    """The implicit-momentum correction: explicit μ_L = μ* − (1 − 1/M), clipped to [lower, upper].

    μ* is the best momentum without asynchrony (M = 1); the total momentum μ_L + μ_S then stays μ*
    to first order (Theorem 5: the two act additively, sec. III).
    """
    mu_star = check_momentum(mu_star)
    return float(min(max(mu_star - implicit_momentum(workers), lower), upper))


def expected_momentum_coefficients(mu_s, mu_l):
    """(c1, c2, c3) of Theorem 6 in recurrence form (appendix eq. 19):
    E w_{t+1} = c1 E w_t − c2 E w_{t−1} + c3 E w_{t−2} − α(1 − μ_S) E∇f(w_t), with
    c1 = 1 + μ_S + μ_L, c2 = μ_S + μ_L + μ_S μ_L, c3 = μ_S μ_L."""
    mu_s, mu_l = check_implicit_momentum(mu_s), check_momentum(mu_l)
    return 1.0 + mu_s + mu_l, mu_s + mu_l + mu_s * mu_l, mu_s * mu_l


def expected_momentum_iterates(hessian, w0, w_star, alpha, mu_s, mu_l, steps):
    """E w_t, t = 0..steps, on f(w) = ½ (w − w*)ᵀ H (w − w*) by Theorem 6's recurrence (eq. 19).

    Starts as every worker does from w_0 (E w_{−1} = w_0, E w_1 = w_0 − α H (w_0 − w*)).
    Returns an array (steps + 1, n).
    """
    H = np.atleast_2d(np.asarray(hessian, dtype=float))
    w0, w_star = np.asarray(w0, dtype=float), np.asarray(w_star, dtype=float)
    alpha = check_positive(alpha, "alpha")
    c1, c2, c3 = expected_momentum_coefficients(mu_s, mu_l)
    steps = check_tau(steps, "steps")
    out = np.empty((steps + 1, w0.size))
    out[0] = w0
    if steps >= 1:
        out[1] = w0 - alpha * H @ (w0 - w_star)
    for t in range(1, steps):
        before = out[t - 2] if t >= 2 else w0
        grad = H @ (out[t] - w_star)
        out[t + 1] = c1 * out[t] - c2 * out[t - 1] + c3 * before - alpha * (1.0 - float(mu_s)) * grad
    return out


def momentum_rate_cubics(eigenvalues, alpha, mu_s, mu_l):
    """The cubics (†) x³ − z_i x² + (μ_S + μ_L + μ_S μ_L) x − μ_S μ_L, one row per eigenvalue λ_i
    (descending powers); z_i = 1 + μ_S + μ_L − α(1 − μ_S) λ_i (Theorem 7, eq. 10–11 with x = 1/t)."""
    lam = np.atleast_1d(np.asarray(eigenvalues, dtype=float))
    if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError("eigenvalues must be a non-empty 1-D sequence of finite numbers >= 0")
    alpha = check_positive(alpha, "alpha")
    c1, c2, c3 = expected_momentum_coefficients(mu_s, mu_l)
    z = c1 - alpha * (1.0 - float(mu_s)) * lam
    return np.column_stack([np.ones_like(z), -z, np.full_like(z, c2), np.full_like(z, -c3)])


def _cubic_root_moduli(z, c2, c3):
    """max |x| over the roots of x³ − z x² + c2 x − c3, for arrays z, c2, c3 of one shape
    (eigenvalues of the companion matrices, batched)."""
    z, c2, c3 = np.broadcast_arrays(np.asarray(z, float), np.asarray(c2, float), np.asarray(c3, float))
    comp = np.zeros(z.shape + (3, 3))
    comp[..., 0, 0], comp[..., 0, 1], comp[..., 0, 2] = z, -c2, c3
    comp[..., 1, 0] = comp[..., 2, 1] = 1.0
    return np.abs(np.linalg.eigvals(comp)).max(axis=-1)


def momentum_rate(eigenvalues, alpha, mu_s, mu_l):
    """γ = max_i 1/|t_i*| (Theorem 7, eq. 12): ‖E w_t − w*‖ = O(γ^t) on a quadratic whose Hessian
    AᵀA has the given eigenvalues, with step α, implicit momentum μ_S and explicit momentum μ_L.
    γ < 1 iff the expected iterates converge."""
    cubics = momentum_rate_cubics(eigenvalues, alpha, mu_s, mu_l)
    return float(_cubic_root_moduli(-cubics[:, 1], cubics[:, 2], -cubics[:, 3]).max())


def quadratic_spectrum(condition, size=40):
    """The spectrum of the paper's figure-6 quadratics: ``size`` eigenvalues spread evenly over [1, Q]."""
    q = check_positive(condition, "condition number Q")
    if q < 1:
        raise ValueError(f"condition number Q must be >= 1, got {condition!r}")
    size = check_tau(size, "size")
    if size < 1:
        raise ValueError("size must be >= 1")
    return np.linspace(1.0, q, size)


def _rates_on_grid(lam, mu_s, mus, log_alphas):
    """γ on the grid mus × exp(log_alphas): array (len(mus), len(log_alphas))."""
    mu = mus[:, None, None]
    alpha = np.exp(log_alphas)[None, :, None]
    z = 1.0 + mu_s + mu - alpha * (1.0 - mu_s) * lam[None, None, :]
    return _cubic_root_moduli(z, mu_s + mu + mu_s * mu, mu_s * mu).max(axis=-1)


def _alpha_range(lam, mu_s):
    """log α over which the rate is searched: 1e-3/λmax .. 8/((1 − μ_S) λmin) (beyond the expected edge)."""
    return math.log(1e-3 / lam.max()), math.log(8.0 / ((1.0 - mu_s) * lam.min()))


def _best_alpha(lam, mu_s, mu_l, points=OPTIMAL_ALPHA_POINTS):
    """(min over α of γ, its log α) at fixed μ_L: a grid in log α, then bounded Brent (xatol 1e-10)
    between the neighbours of the best grid point."""
    from scipy.optimize import minimize_scalar

    grid = np.linspace(*_alpha_range(lam, mu_s), points)
    rates = _rates_on_grid(lam, mu_s, np.array([mu_l]), grid)[0]
    j = int(np.argmin(rates))
    a, b = grid[max(j - 1, 0)], grid[min(j + 1, grid.size - 1)]
    res = minimize_scalar(lambda x: _rates_on_grid(lam, mu_s, np.array([mu_l]), np.array([x]))[0, 0],
                          bounds=(a, b), method="bounded", options={"xatol": 1e-10})
    if res.fun <= rates[j]:
        return float(res.fun), float(res.x)
    return float(rates[j]), float(grid[j])


def optimal_momentum(eigenvalues, mu_s, tol=1e-3):
    """The explicit momentum μ_L ∈ (−1, 1) and step α > 0 that minimise the rate γ of Theorem 7.

    γ is a maximum of root moduli, with kinks where the extreme eigenvalues balance, so the search
    is by profiles: ρ(μ_L) = min over α of γ (``_best_alpha``: a log-α grid over 1e-3/λmax ..
    8/((1 − μ_S) λmin), then bounded Brent); ρ on a μ_L grid of step 0.03 over [−0.99, 0.99], then
    bounded Brent in μ_L between the neighbours of the best grid point, to ``tol``/100.
    Returns ``{"mu_l", "alpha", "rate"}`` (figure 6 of the paper for Q = 5, 20).
    """
    lam = np.atleast_1d(np.asarray(eigenvalues, dtype=float))
    mu_s = check_implicit_momentum(mu_s)
    tol = check_positive(tol, "tol")
    if lam.ndim != 1 or lam.size == 0 or np.any(lam <= 0) or not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues must be a non-empty 1-D sequence of finite numbers > 0")
    from scipy.optimize import minimize_scalar

    mus = np.linspace(-0.99, 0.99, OPTIMAL_MU_POINTS)
    coarse = [_best_alpha(lam, mu_s, mu)[0] for mu in mus]  # ρ is steep on one side of its minimum: exact per μ
    i = int(np.argmin(coarse))
    lo, hi = mus[max(i - 1, 0)], mus[min(i + 1, mus.size - 1)]
    res = minimize_scalar(lambda mu: _best_alpha(lam, mu_s, mu)[0], bounds=(lo, hi), method="bounded",
                          options={"xatol": tol / 100})
    candidates = [float(res.x), float(mus[i])]
    best = min(((_best_alpha(lam, mu_s, mu), mu) for mu in candidates), key=lambda c: c[0][0])
    (rate, log_alpha), mu = best
    return {"mu_l": float(mu), "alpha": float(math.exp(log_alpha)), "rate": float(rate)}


def optimal_rate_at_momentum(eigenvalues, mu_s, mu_l):
    """min over α > 0 of γ at fixed explicit momentum μ_L (figure 7's "tuned α" curves).
    Returns ``{"alpha", "rate"}``."""
    lam = np.atleast_1d(np.asarray(eigenvalues, dtype=float))
    mu_s, mu_l = check_implicit_momentum(mu_s), check_momentum(mu_l)
    if lam.ndim != 1 or lam.size == 0 or np.any(lam <= 0) or not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues must be a non-empty 1-D sequence of finite numbers > 0")
    rate, log_alpha = _best_alpha(lam, mu_s, mu_l, 4 * OPTIMAL_ALPHA_POINTS)
    return {"alpha": float(math.exp(log_alpha)), "rate": rate}


def geometric_momentum_polynomial(mu_s, momentum):
    """(P, Q) of server momentum m with dampening under geometric staleness P(τ = k) = (1−q) q^k,
    q = μ_S (eq. 19 with momentum, exact: no truncation of the delay law):

        (z − 1)(z − m)(z − q) + α (1 − m)(1 − q) z² = 0,   α = a η,

    the cubic (†) of Theorem 7 with α_paper λ = α (1 − m). P is monic of degree 3, Q = (1−m)(1−q) z².
    """
    q, m = check_implicit_momentum(mu_s), check_momentum(momentum)
    P = np.poly([1.0, m, q]).astype(float)
    Q = np.array([0.0, (1.0 - m) * (1.0 - q), 0.0, 0.0])
    return P, Q


def geometric_momentum_edge(mu_s, momentum, *, method="locus"):
    """The stability edge α* = a η of server momentum m ∈ (−1, 1) (with dampening) under geometric
    staleness with implicit momentum μ_S (M workers: μ_S = 1 − 1/M): the smallest α > 0 at which a
    root of ``geometric_momentum_polynomial`` reaches the unit circle.

    Closed forms: m = 0 gives 2(1 + q)/(1 − q) (the geometric-delay bridge); q = 0 gives
    2(1 + m)/(1 − m); a real crossing at z = −1 is at α = 2(1 + m)(1 + q)/((1 − m)(1 − q)).
    """
    P, Q = geometric_momentum_polynomial(mu_s, momentum)
    if method in ("auto", "locus"):  # "auto": the root locus
        return _edge_by_root_locus(P, Q)
    if method == "companion":
        return _edge_by_companion(P, Q)
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


# ------------------------------------------------------------------------------------------------
# 8. Random staleness: mean, mean-square and almost-sure edges (beyond the paper)
# ------------------------------------------------------------------------------------------------
#
# Eq. 19 is the edge of the *mean* iterate E x_t over delays drawn i.i.d. per step. A random product
# x_{t+1} = A_t x_t has three stability notions, ordered (for the edges) mean-square ≤ almost-sure
# and mean-square ≤ mean:
#
#   mean          ρ(E[A]) < 1                 (E x_t → 0; eq. 19 for i.i.d. delays)
#   mean-square   ρ(E[A ⊗ A]) < 1             (E x_t x_tᵀ → 0: S' = E[A S Aᵀ], the second moments)
#   almost-sure   λ = lim (1/t) log ‖x_t‖ < 0 (top Lyapunov exponent of the product)
#
# (E log‖x‖ ≤ ½ log E‖x‖² gives λ ≤ ½ log ρ(E[A⊗A]), so mean-square stable ⇒ a.s. stable.) The mean
# can be stable while almost every trajectory grows: a geometric delay gives eq. 19's 2(1+q)/(1−q)
# = 4M − 2 for q = 1 − 1/M, above the undelayed edge 2.
#
# Everything is the scalar linearisation along the top Hessian direction, α = a·η, with the step
# conventions of ``DelayedSGD`` (dampening: the landed gradient enters with β = α(1 − m)).
#
# Staleness models.
# (a) i.i.d. delays P(τ = k) = p_k, k = 0..K (eq. 18's ``schedule="distribution"``): the state is the
#     history X_t = (x_t, …, x_{t−K}) (and the velocities), and A_k = D + c d_kᵀ is rank one away
#     from a fixed shift D:
#       plain     x_{t+1} = x_t − α x_{t−τ}:                  c = e_{x0},          d_k = −α e_{x_k}
#       momentum  v' = m v − β x_{t−τ}, x_{t+1} = x_t + v':   c = e_{x0} + e_v,    d_k = −β e_{x_k}
#       shifted   v_{t+1} = m v_{t−τ} − β x_{t−τ}, x_{t+1} = x_t + v_{t+1} (history of v in the state):
#                                                             c = e_{x0} + e_{v0}, d_k = m e_{v_k} − β e_{x_k}
#     so E[A S Aᵀ] = D S Dᵀ + D S d̄ cᵀ + c d̄ᵀ S Dᵀ + c cᵀ Σ_k p_k d_kᵀ S d_k with d̄ = Σ_k p_k d_k:
#     O(n²) per application, and the mean-square radius comes from ARPACK on this operator.
# (b) M workers with a landing rule (``schedule="random"`` and its relatives): each worker holds one
#     gradient, taken at the weights u it read; at every step one worker lands, w' = w − α u, and
#     reads w'. The state is (w, u_1..u_M) — size M + 1 — with the workers *sorted by age* (u_1 the
#     youngest, age 0: it read the current weights), so that a landing is named by its rank r:
#       w' = w − α u_r,   u'_1 = w',   u'_{k+1} = u_k (k < r),   u'_k = u_k (k > r).
#     Server momentum adds one velocity v (v' = m v − β u_r, w' = w + v'); shifted momentum one
#     velocity per worker, carried with it (v'_r = m v_r − β u_r, w' = w + v'_r, and v'_1 = v'_r).
#     Landing rules: uniform (the queueing model of *Asynchrony begets Momentum*: r uniform, i.i.d.
#     — an i.i.d. switched linear system of size M + 1), round robin (always the oldest, r = M: the
#     constant delay τ = M − 1, all three edges equal eq. 6) and the Gaussian rule
#     P(r) ∝ Φ((s_r − M)/(M/4)) with s_r the staleness (age) of rank r at landing. The Gaussian rule
#     depends on the ages, so it is a Markov jump linear system: the mode is the sorted age vector
#     (0, s_2, …, s_M), which a landing of rank r maps to (0, sorted{s_k + 1, k ≠ r}); the modes are
#     enumerated from (0, 1, …, M − 1) (reachable from every mode: land the oldest M times), dropping
#     transitions of probability below ``prune`` (the rest renormalised). The moments then carry the
#     mode: q_s = E[X 1{mode = s}] and S_s = E[X Xᵀ 1{mode = s}],
#       q'_{s'} = Σ_{s, r → s'} P(r | s) A_r q_s,     S'_{s'} = Σ_{s, r → s'} P(r | s) A_r S_s A_rᵀ.
#     The almost-sure edge is indifferent to the mode representation (the simulation draws the ages).
# Gradient noise (option ``noise`` = ν): the curvature the landing gradient sees is a(1 + ν ξ_t), ξ_t
# i.i.d. N(0, 1) (the noise-to-signal ratio of the minibatch curvature along the direction), i.e.
# α_t = α(1 + ν ξ_t): the mean is unchanged, E[A S Aᵀ] gains (ν α)² G S Gᵀ (G = ∂A/∂α).
#
# Almost-sure edge (Monte Carlo): ``chains`` independent trajectories from a random start, renormalised
# every ``renorm`` steps; λ̂_i = (1/T) Σ log(norm before renormalisation) over T = ``steps`` steps after
# ``burn`` steps of burn-in; λ̂ = mean_i λ̂_i with standard error sd_i(λ̂_i)/√chains. The same random
# numbers are used for every α (common random numbers), so λ̂(α) is a smooth function of α whose
# zero is bracketed on a grid, refined on a finer grid and interpolated; the edge's error is the
# standard error of λ̂ there over the slope |dλ̂/dα|.
#
# Edges are found by scanning α upward on a geometric grid (ratio √2) from ``EDGE_ALPHA_MIN``
# to the first unstable point, then bisection to ``EDGE_REL_TOL``; the criteria are monotone in α
# only empirically, so a stable window above the first unstable point would be missed (the scan
# grid is what guards against a bracket that hides one).

CRITERIA = ("mean", "mean-square", "almost-sure")
LANDINGS = ("uniform", "gaussian", "round-robin")
EDGE_ALPHA_MIN = 1.0 / 256.0
EDGE_ALPHA_MAX = 1024.0
EDGE_REL_TOL = 1e-6
GAUSSIAN_PRUNE = 1e-12
MAX_MODES = 3000
DENSE_DIM = 400


def check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
    return criterion


def check_landing(landing):
    if landing not in LANDINGS:
        raise ValueError(f"landing must be one of {', '.join(LANDINGS)}; got {landing!r}")
    return landing


def check_workers(workers):
    if isinstance(workers, (bool, np.bool_)) or not isinstance(workers, Integral) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return int(workers)


def check_noise(noise):
    if isinstance(noise, (bool, np.bool_)) or not isinstance(noise, Real) or not math.isfinite(noise) \
            or noise < 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    return float(noise)


def _check_random_variant(variant, momentum):
    momentum = check_momentum(momentum)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if variant == "plain" and momentum != 0.0:
        raise ValueError(f"variant 'plain' has no momentum (got momentum={momentum:g})")
    return momentum


# ----------------------------------------------------------------------------- spectral radii
def _operator_radius(apply, dim, tol=1e-9):
    """ρ of the linear map ``apply`` (vector → vector) on R^dim: dense eigenvalues up to DENSE_DIM,
    else ARPACK (largest modulus; retried once with a larger Krylov space: moment operators near the
    edge are far from normal). A RuntimeError where it still does not converge."""
    if dim <= DENSE_DIM:
        return _dense_radius(apply, dim)
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    op = LinearOperator((dim, dim), matvec=apply, dtype=float)
    v0 = np.random.default_rng(0).standard_normal(dim)
    for ncv, maxiter in ((min(dim, 40), 20000), (min(dim, 160), 50000)):
        try:
            vals = eigs(op, k=1, which="LM", v0=v0, tol=tol, maxiter=maxiter, ncv=ncv, return_eigenvectors=False)
            return float(np.max(np.abs(vals)))
        except ArpackNoConvergence as exc:
            if len(exc.eigenvalues):
                return float(np.max(np.abs(exc.eigenvalues)))
    raise RuntimeError(f"ARPACK did not converge on a {dim}-dimensional moment operator")


def _dense_radius(apply, dim):
    """ρ of ``apply`` from its dense matrix (built column by column)."""
    matrix = np.column_stack([apply(col) for col in np.eye(dim)])
    return float(np.max(np.abs(np.linalg.eigvals(matrix))))


# ----------------------------------------------------------------------------- (a) i.i.d. delays
def _iid_structure(probs, alpha, momentum, variant):
    """(D sparse, c, d (K+1, n) rows d_k, index of x_k) of the i.i.d.-delay system (see above)."""
    from scipy.sparse import lil_matrix

    p = np.asarray(probs, dtype=float)
    K = len(p) - 1
    beta = alpha * (1.0 - momentum)
    xs = np.arange(K + 1)
    if variant == "plain":
        n = K + 1
    elif variant == "momentum":
        n = K + 2
    else:
        n = 2 * K + 2
    D = lil_matrix((n, n))
    D[0, 0] = 1.0
    for i in range(1, K + 1):
        D[i, i - 1] = 1.0
    c = np.zeros(n)
    c[0] = 1.0
    d = np.zeros((K + 1, n))
    d[xs, xs] = -beta
    if variant == "momentum":
        D[0, K + 1] = momentum
        D[K + 1, K + 1] = momentum
        c[K + 1] = 1.0
    elif variant == "shifted":
        for i in range(1, K + 1):
            D[K + 1 + i, K + i] = 1.0
        c[K + 1] = 1.0
        d[xs, K + 1 + xs] = momentum
    return D.tocsr(), c, d, xs


def iid_mean_matrix(probs, alpha, momentum=0.0, variant="plain"):
    """E[A] = D + c d̄ᵀ of the i.i.d.-delay system (its characteristic polynomial is eq. 19/26)."""
    D, c, d, _ = _iid_structure(probs, alpha, momentum, variant)
    return D.toarray() + np.outer(c, np.asarray(probs) @ d)


def iid_second_moment(probs, alpha, momentum=0.0, variant="plain", noise=0.0):
    """The map S ↦ E[A S Aᵀ] = D S Dᵀ + D S d̄ cᵀ + c d̄ᵀ S Dᵀ + c cᵀ (Σ_k p_k d_kᵀ S d_k
    + (ν β)² Σ_k p_k S_{x_k x_k}) on symmetric n × n matrices (β = α(1 − m))."""
    p = np.asarray(probs, dtype=float)
    D, c, d, xs = _iid_structure(p, alpha, momentum, variant)
    dbar = p @ d
    beta = alpha * (1.0 - momentum)
    vs = xs + len(p) if variant == "shifted" else None  # v_{t-k} sits at K + 1 + k
    noise2 = (noise * beta) ** 2
    Dd = D.toarray() if D.shape[0] <= 2 * DENSE_DIM else D

    def apply(S):
        DS = Dd @ S
        out = (Dd @ DS.T).T
        u = DS @ dbar
        quad = (beta ** 2 + noise2) * float(p @ S[xs, xs])
        if vs is not None:
            quad += float(p @ (momentum ** 2 * S[vs, vs] - 2.0 * momentum * beta * S[vs, xs]))
        out += np.outer(u, c) + np.outer(c, u) + quad * np.outer(c, c)
        return out

    return apply, D.shape[0]


def iid_radius(probs, alpha, criterion, momentum=0.0, variant="plain", noise=0.0):
    """ρ(E[A]) ("mean") or ρ(E[A ⊗ A]) ("mean-square") of the i.i.d.-delay system at α."""
    if criterion == "mean":
        return float(np.max(np.abs(np.linalg.eigvals(iid_mean_matrix(probs, alpha, momentum, variant)))))
    apply, n = iid_second_moment(probs, alpha, momentum, variant, noise)
    return _operator_radius(lambda v: apply(v.reshape(n, n)).ravel(), n * n)


# ----------------------------------------------------------------------------- (b) workers
def worker_state_size(workers, variant="plain"):
    """M + 1 (plain), M + 2 (server momentum), 2M + 1 (shifted momentum)."""
    return {"plain": workers + 1, "momentum": workers + 2, "shifted": 2 * workers + 1}[variant]


def rank_sources(workers):
    """src[r, k]: the old rank that moves to rank k after a landing of rank r (0-based; k = 0 is the
    landed worker, which reads w', so src[r, 0] = r)."""
    M = workers
    k = np.arange(M)
    return np.where(k[None, :] == 0, np.arange(M)[:, None],
                    np.where(k[None, :] <= np.arange(M)[:, None], k[None, :] - 1, k[None, :]))


def worker_maps(workers, alpha, momentum=0.0, variant="plain"):
    """A_r(α), r = 0..M−1 (0 = youngest), as a (M, n, n) array: the landing of rank r (see above)."""
    M = check_workers(workers)
    m = _check_random_variant(variant, momentum)
    beta = alpha * (1.0 - m)
    n = worker_state_size(M, variant)
    src = rank_sources(M)
    u0 = 1 if variant != "momentum" else 2
    A = np.zeros((M, n, n))
    for r in range(M):
        row = np.zeros(n)  # w' as a function of the state
        row[0] = 1.0
        row[u0 + r] = -beta
        if variant == "momentum":
            row[1] = m
            A[r, 1, 1] = m
            A[r, 1, u0 + r] = -beta
        if variant == "shifted":
            vrow = np.zeros(n)  # v'_r
            vrow[1 + M + r] = m
            vrow[u0 + r] = -beta
            row[1 + M + r] = m
            A[r, 1 + M] = vrow
            for k in range(1, M):
                A[r, 1 + M + k, 1 + M + src[r, k]] = 1.0
        A[r, 0] = row
        A[r, u0] = row
        for k in range(1, M):
            A[r, u0 + k, u0 + src[r, k]] = 1.0
    return A


def gaussian_landing_weights(ages, workers):
    """Φ((s − M)/(M/4)) for staleness s (the authors' Gaussian landing rule, unnormalised)."""
    from scipy.special import ndtr

    return ndtr((np.asarray(ages, dtype=float) - workers) / (workers / 4.0))


def gaussian_age_cap(workers):
    """The age from which Φ((s − M)/(M/4)) is 1 in double precision (s ≥ M + 9·M/4): older ages are
    lumped there, exactly, because the landing maps depend on the ranks only."""
    return int(math.ceil(workers + 9.0 * workers / 4.0))


def landing_modes(workers, landing, prune=GAUSSIAN_PRUNE, max_modes=MAX_MODES):
    """The mode chain of a landing rule: (modes, src_mode, rank, dst_mode, prob) with one entry per
    transition. Uniform and round robin have one mode (i.i.d. ranks); the Gaussian rule has the
    sorted age vectors reachable from (0, 1, …, M − 1), transitions below ``prune`` dropped
    and ages lumped at ``gaussian_age_cap``."""
    M = check_workers(workers)
    landing = check_landing(landing)
    if landing == "uniform":
        r = np.arange(M)
        return [None], np.zeros(M, int), r, np.zeros(M, int), np.full(M, 1.0 / M)
    if landing == "round-robin":
        return [None], np.zeros(1, int), np.array([M - 1]), np.zeros(1, int), np.ones(1)
    cap = gaussian_age_cap(M)
    start = tuple(range(M))
    index, modes, queue = {start: 0}, [start], [start]
    src, ranks, dst, probs = [], [], [], []
    while queue:
        ages = queue.pop()
        w = gaussian_landing_weights(ages, M)
        w = w / w.sum()
        keep = w >= prune
        w = np.where(keep, w, 0.0)
        w = w / w.sum()
        for r in np.flatnonzero(keep):
            new = (0,) + tuple(min(a + 1, cap) for k, a in enumerate(ages) if k != r)
            if new not in index:
                if len(modes) >= max_modes:
                    raise ValueError(f"the Gaussian landing rule with {M} workers has more than {max_modes} "
                                     "age modes; use the almost-sure (Monte Carlo) criterion")
                index[new] = len(modes)
                modes.append(new)
                queue.append(new)
            src.append(index[ages])
            ranks.append(r)
            dst.append(index[new])
            probs.append(w[r])
    return modes, np.array(src), np.array(ranks), np.array(dst), np.array(probs)


def worker_radius(workers, alpha, criterion, landing="uniform", momentum=0.0, variant="plain", noise=0.0,
                  chain=None):
    """ρ of the mean (q' = Σ P A_r q) or second-moment (S' = Σ P (A_r S A_rᵀ + (να)² G_r S G_rᵀ))
    recursion of M workers over the mode chain (``landing_modes``; pass ``chain`` to reuse it)."""
    A = worker_maps(workers, alpha, momentum, variant)
    modes, s, r, t, p = chain if chain is not None else landing_modes(workers, landing)
    nm, n = len(modes), A.shape[1]
    Ar = A[r]
    if criterion == "mean":
        def apply(v):
            q = v.reshape(nm, n)
            out = np.zeros_like(q)
            np.add.at(out, t, p[:, None] * np.einsum("kij,kj->ki", Ar, q[s]))
            return out.ravel()

        return _operator_radius(apply, nm * n)
    G = (worker_maps(workers, 1.0, momentum, variant) - worker_maps(workers, 0.0, momentum, variant))[r]
    nu2 = (noise * alpha) ** 2

    def apply(v):
        S = v.reshape(nm, n, n)[s]
        terms = Ar @ S @ Ar.transpose(0, 2, 1)
        if nu2:
            terms = terms + nu2 * (G @ S @ G.transpose(0, 2, 1))
        out = np.zeros((nm, n, n))
        np.add.at(out, t, p[:, None, None] * terms)
        return out.ravel()

    return _operator_radius(apply, nm * n * n)


# ----------------------------------------------------------------------------- almost sure: Monte Carlo
class LyapunovSettings:
    """Monte-Carlo settings of the top Lyapunov exponent (see the section's comment)."""

    def __init__(self, chains=64, steps=4000, burn=500, renorm=20, seed=0):
        self.chains, self.steps, self.burn, self.renorm, self.seed = int(chains), int(steps), int(burn), \
            int(renorm), int(seed)
        if min(self.chains, self.steps, self.renorm) < 1 or self.burn < 0 or self.chains < 2:
            raise ValueError("Lyapunov settings: chains >= 2, steps >= 1, renorm >= 1, burn >= 0")

    def as_dict(self):
        return {"chains": self.chains, "steps": self.steps, "burn": self.burn, "renorm": self.renorm,
                "seed": self.seed}


def _worker_ranks(workers, landing, n_steps, chains, rng):
    """(n_steps, chains) landing ranks of the mode chain (Gaussian: the ages are simulated)."""
    M = workers
    if landing == "uniform":
        return rng.integers(0, M, size=(n_steps, chains))
    if landing == "round-robin":
        return np.full((n_steps, chains), M - 1)
    src = rank_sources(M)
    ages = np.tile(np.arange(M), (chains, 1))
    out = np.empty((n_steps, chains), dtype=int)
    for t in range(n_steps):
        w = np.cumsum(gaussian_landing_weights(ages, M), axis=1)
        r = (w < rng.random(chains)[:, None] * w[:, -1:]).sum(axis=1)
        out[t] = r
        ages = np.take_along_axis(ages, src[r], axis=1) + 1
        ages[:, 0] = 0
    return out


def _lyapunov_run(step, state, settings, alphas, rng_noise, noise):
    """Run ``step(state, t, alpha_t)`` and return (λ̂ per α, standard error per α)."""
    S = settings
    total = S.burn + S.steps
    logs = np.zeros(state.shape[:2])
    norm0 = np.sqrt((state ** 2).sum(axis=tuple(range(2, state.ndim))))
    state = state / norm0.reshape(norm0.shape + (1,) * (state.ndim - 2))
    for t in range(total):
        a_t = alphas[:, None]
        if noise:
            a_t = a_t * (1.0 + noise * rng_noise.standard_normal(S.chains))[None, :]
        state = step(state, t, a_t)
        if (t + 1) % S.renorm == 0 or t + 1 in (S.burn, total):
            norm = np.sqrt((state ** 2).sum(axis=tuple(range(2, state.ndim))))
            norm = np.where(norm > 0, norm, 1e-300)
            state = state / norm.reshape(norm.shape + (1,) * (state.ndim - 2))
            if t >= S.burn:
                logs += np.log(norm)
    per_chain = logs / S.steps
    return per_chain.mean(axis=1), per_chain.std(axis=1, ddof=1) / math.sqrt(S.chains)


def worker_lyapunov(workers, alphas, landing="uniform", momentum=0.0, variant="plain", noise=0.0,
                    settings=None):
    """(λ̂(α), standard error) for each α of ``alphas``: M workers, common random numbers."""
    S = settings or LyapunovSettings()
    M = check_workers(workers)
    m = _check_random_variant(variant, momentum)
    alphas = np.atleast_1d(np.asarray(alphas, dtype=float))
    rng = np.random.default_rng(S.seed)
    ranks = _worker_ranks(M, check_landing(landing), S.burn + S.steps, S.chains, rng)
    F = worker_maps(M, 0.0, m, variant)
    G = worker_maps(M, 1.0, m, variant) - F
    state = np.broadcast_to(rng.standard_normal((S.chains, F.shape[1])), (len(alphas), S.chains, F.shape[1])).copy()

    def step(x, t, a_t):
        r = ranks[t]
        fx = np.einsum("cij,acj->aci", F[r], x)
        gx = np.einsum("cij,acj->aci", G[r], x)
        return fx + a_t[..., None] * gx

    return _lyapunov_run(step, state, S, alphas, np.random.default_rng(S.seed + 1), check_noise(noise))


def iid_lyapunov(probs, alphas, momentum=0.0, variant="plain", noise=0.0, settings=None):
    """(λ̂(α), standard error) of x_{t+1} = x_t − α x_{t−τ_t} (and its momentum variants), τ_t i.i.d."""
    S = settings or LyapunovSettings()
    p = check_probabilities(probs)
    m = _check_random_variant(variant, momentum)
    alphas = np.atleast_1d(np.asarray(alphas, dtype=float))
    rng = np.random.default_rng(S.seed)
    K = len(p) - 1
    cdf = np.cumsum(p)
    taus = np.minimum(np.searchsorted(cdf, rng.random((S.burn + S.steps, S.chains)) * cdf[-1], side="right"), K)
    L = K + 1
    # state[..., 0, :]: ring of x; [..., 1, :]: ring of v (velocities; server momentum uses slot 0 only)
    init = rng.standard_normal((S.chains, 2, L))
    if variant == "plain":
        init[:, 1] = 0.0
    state = np.broadcast_to(init, (len(alphas), S.chains, 2, L)).copy()
    chains = np.arange(S.chains)

    def step(st, t, a_t):
        beta = a_t * (1.0 - m)
        now, back, nxt = t % L, (t - taus[t]) % L, (t + 1) % L
        x_now, x_back = st[:, chains, 0, now], st[:, chains, 0, back]
        if variant == "plain":
            st[:, chains, 0, nxt] = x_now - a_t * x_back
        elif variant == "momentum":
            v = m * st[:, chains, 1, 0] - beta * x_back
            st[:, chains, 1, 0] = v
            st[:, chains, 0, nxt] = x_now + v
        else:
            v = m * st[:, chains, 1, back] - beta * x_back
            st[:, chains, 1, nxt] = v
            st[:, chains, 0, nxt] = x_now + v
        return st

    return _lyapunov_run(step, state, S, alphas, np.random.default_rng(S.seed + 1), check_noise(noise))


# ----------------------------------------------------------------------------- the edges
def _first_unstable(unstable, lo=EDGE_ALPHA_MIN, hi=EDGE_ALPHA_MAX, ratio=2.0 ** 0.5):
    """(last stable, first unstable) α on the geometric scan grid from ``lo``."""
    prev, a = None, lo
    while a <= hi:
        if unstable(a):
            if prev is None:
                raise RuntimeError(f"unstable already at alpha = {a:g}")
            return prev, a
        prev, a = a, a * ratio
    return prev, math.inf


def _bisect(unstable, lo, hi, rel_tol=EDGE_REL_TOL):
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return 0.5 * (lo + hi)


def _edge_from_radius(radius):
    lo, hi = _first_unstable(lambda a: radius(a) >= 1.0)
    if hi == math.inf:
        return math.inf
    return _bisect(lambda a: radius(a) >= 1.0, lo, hi)


def _edge_from_lyapunov(lyap, lo, points=24):
    """Zero of λ̂(α) above ``lo`` (where λ̂ < 0): a geometric grid of ``points`` α values from ``lo`` to
    8·lo (extended 8-fold until λ̂ > 0 at its end), then a linear grid of ``points`` values across the
    first sign change — one vectorised simulation per grid — and linear interpolation between the two
    grid points that bracket the zero. Returns (edge, its standard error: max SE of λ̂ there / slope)."""
    hi = lo
    while True:
        grid = np.geomspace(lo, hi * 8.0, points)
        lam, _ = lyap(grid)
        if (lam > 0).any():
            break
        lo, hi = grid[-1], grid[-1]
        if lo > EDGE_ALPHA_MAX:
            return math.inf, 0.0
    k = int(np.argmax(lam > 0))
    if k == 0:
        raise RuntimeError(f"lambda > 0 already at alpha = {grid[0]:g}, the lower bracket")
    grid = np.linspace(grid[k - 1], grid[k], points)
    lam, se = lyap(grid)
    k = int(np.argmax(lam > 0))
    if lam[k] <= 0 or k == 0:  # the noise moved the crossing to an end of the bracket
        return float(grid[k]), float(grid[-1] - grid[0])
    slope = (lam[k] - lam[k - 1]) / (grid[k] - grid[k - 1])
    edge = grid[k - 1] - lam[k - 1] / slope
    return float(edge), float(max(se[k - 1], se[k]) / slope)


def iid_edge(probs, criterion, momentum=0.0, variant="plain", noise=0.0, settings=None):
    """The edge α* of i.i.d. delays P(τ = k) by criterion; returns {"alpha": α*, "stderr": …}
    (stderr 0 for the exact criteria). The mean edge is eq. 19 (eq. 26 with momentum)."""
    p = check_probabilities(probs)
    criterion = check_criterion(criterion)
    m = _check_random_variant(variant, momentum)
    noise = check_noise(noise)
    if criterion == "mean":
        if variant == "shifted":
            return {"alpha": _edge_from_radius(lambda a: iid_radius(p, a, "mean", m, variant)), "stderr": 0.0}
        return {"alpha": critical_alpha(p, m, variant), "stderr": 0.0}
    ms = _edge_from_radius(lambda a: iid_radius(p, a, "mean-square", m, variant, noise))
    if criterion == "mean-square":
        return {"alpha": ms, "stderr": 0.0}
    edge, err = _edge_from_lyapunov(lambda al: iid_lyapunov(p, al, m, variant, noise, settings)[:2], 0.999 * ms)
    return {"alpha": edge, "stderr": err}


def worker_edge(workers, criterion, landing="uniform", momentum=0.0, variant="plain", noise=0.0, settings=None):
    """The edge α* of M workers with a landing rule by criterion; {"alpha": α*, "stderr": …, "modes": …}."""
    M = check_workers(workers)
    criterion = check_criterion(criterion)
    landing = check_landing(landing)
    m = _check_random_variant(variant, momentum)
    noise = check_noise(noise)
    if landing == "round-robin" and noise == 0.0:
        # deterministic product: all three criteria are the constant delay τ = M − 1 (eq. 6/26/11)
        return {"alpha": critical_alpha(M - 1, m, variant), "stderr": 0.0, "modes": 1}
    if criterion == "almost-sure":
        lower = worker_edge(M, "mean-square", landing, m, variant, noise)["alpha"] if landing != "gaussian" \
            else EDGE_ALPHA_MIN
        edge, err = _edge_from_lyapunov(
            lambda al: worker_lyapunov(M, al, landing, m, variant, noise, settings), 0.999 * lower)
        return {"alpha": edge, "stderr": err, "modes": None}
    chain = landing_modes(M, landing)
    alpha = _edge_from_radius(lambda a: worker_radius(M, a, criterion, landing, m, variant, noise, chain=chain))
    return {"alpha": alpha, "stderr": 0.0, "modes": len(chain[0])}
