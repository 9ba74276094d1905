"""The exact stability theory (delay_stability.theory) against closed forms, the companion-matrix
method, and brute-force iteration of the paper's scalar recurrences."""

import math

import numpy as np
import pytest
from scipy.special import ndtr

from delay_stability import theory
from delay_stability.theory import (
    characteristic_polynomial,
    critical_alpha,
    eq6_alpha,
    eq7_inv_alpha,
    eq8_lr,
    gaussian_delay,
    geometric_delay,
    mean_delay,
    momentum_alpha_tau0,
    recommended_lr,
    spectral_radius,
    uniform_delay,
)
from oracles import eq3, eq10, eq18, eq25, eq25_stochastic, iterate

REL = 1e-9


def rel_err(a, b):
    return abs(a - b) / abs(b)


# ------------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------------


def test_plain_constant_delay_matches_eq6_for_tau_0_to_200():
    for tau in range(201):
        exact = 2.0 * math.sin(math.pi / (4 * tau + 2))
        assert rel_err(critical_alpha(tau, method="locus"), exact) < REL, tau
        assert critical_alpha(tau) == exact  # the default uses the closed form (theory.closed_form_alpha)
    assert critical_alpha(0) == pytest.approx(2.0, rel=1e-15)
    assert critical_alpha(1) == pytest.approx(1.0, rel=1e-15)


def test_plain_constant_delay_matches_eq6_at_large_tau():
    for tau in (511, 1024, 2000):
        assert rel_err(critical_alpha(tau, method="locus"), 2.0 * math.sin(math.pi / (4 * tau + 2))) < REL


@pytest.mark.parametrize("m", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_momentum_at_tau0_is_heavy_ball_edge(m):
    expected = 2.0 * (1.0 + m) / (1.0 - m)
    assert rel_err(critical_alpha(0, m, "momentum", method="locus"), expected) < REL
    assert rel_err(momentum_alpha_tau0(m), expected) < 1e-15
    # shifted momentum coincides with server momentum without delay (eq. 11 at τ = 0 is eq. 26 times z)
    assert rel_err(critical_alpha(0, m, "shifted"), expected) < REL


def test_eq6_and_linear_eq7_differ_by_less_than_0_05_for_tau_ge_1():
    diffs = [abs(1.0 / critical_alpha(tau) - eq7_inv_alpha(tau)) for tau in range(1, 301)]
    assert max(diffs) < 0.05
    assert diffs[0] == pytest.approx(1.0 - 3.0 / math.pi)  # τ = 1: 1/α* = 1, eq. 7 = 3/π
    # ...and the claim is not vacuous: at τ = 0 the gap is 1/2 − 1/π ≈ 0.18
    assert abs(1.0 / critical_alpha(0) - eq7_inv_alpha(0)) > 0.15


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
def test_geometric_delay_has_the_edge_of_momentum_q(q):
    """P(τ=k) = (1−q)q^k gives the momentum-q dynamics at τ = 0 (Asynchrony begets Momentum)."""
    geometric_edge = critical_alpha(geometric_delay(q))
    assert rel_err(geometric_edge, 2.0 * (1.0 + q) / (1.0 - q)) < REL
    assert rel_err(geometric_edge, critical_alpha(0, q, "momentum")) < REL


def test_uniform_delay_k_k_is_constant_delay_k():
    for k in range(12):
        p = uniform_delay(k, k)
        assert p.shape == (k + 1,) and p[k] == 1.0 and p.sum() == 1.0
        assert rel_err(critical_alpha(p), critical_alpha(k)) < REL
        assert rel_err(critical_alpha(p, 0.7, "momentum"), critical_alpha(k, 0.7, "momentum")) < REL


# ------------------------------------------------------------------------------------------------
# Root locus vs companion matrix (numpy.roots)
# ------------------------------------------------------------------------------------------------

CASES = (
    [(tau, 0.0, "plain") for tau in (0, 1, 2, 3, 7, 16, 33, 64)]
    + [(tau, m, v) for v in ("momentum", "shifted") for m in (0.3, 0.9, 0.99, 0.999)
       for tau in (0, 1, 2, 5, 12, 31, 64)]
    + [(uniform_delay(1, b), 0.0, "plain") for b in (1, 2, 8, 16, 33)]
    + [(gaussian_delay(mu), 0.0, "plain") for mu in (1, 3, 10)]
    + [(uniform_delay(2, 9), m, "momentum") for m in (0.5, 0.9)]
)


@pytest.mark.parametrize("delay,m,variant", CASES)
def test_root_locus_matches_companion_matrix_and_spectral_radius_is_one(delay, m, variant):
    alpha = critical_alpha(delay, m, variant)
    assert rel_err(critical_alpha(delay, m, variant, method="companion"), alpha) < REL
    assert abs(spectral_radius(alpha, delay, m, variant) - 1.0) < 1e-9
    assert spectral_radius(0.999 * alpha, delay, m, variant) < 1.0
    assert spectral_radius(1.001 * alpha, delay, m, variant) > 1.0


def test_root_locus_matches_companion_matrix_on_random_distributions():
    rng = np.random.default_rng(2020)
    for _ in range(40):
        K = int(rng.integers(0, 30))
        p = rng.dirichlet(np.full(K + 1, rng.choice([0.1, 1.0, 5.0])))
        m = float(rng.choice([0.0, 0.5, 0.95]))
        variant = "plain" if m == 0.0 else "momentum"
        alpha = critical_alpha(p, m, variant)
        assert rel_err(critical_alpha(p, m, variant, method="companion"), alpha) < REL
        assert abs(spectral_radius(alpha, p, m, variant) - 1.0) < 1e-9


def test_root_locus_matches_companion_matrix_at_tau_200():
    for m, variant in ((0.9, "momentum"), (0.99, "shifted")):
        alpha = critical_alpha(200, m, variant)
        assert rel_err(critical_alpha(200, m, variant, method="companion"), alpha) < REL


@pytest.mark.parametrize("delay,m,variant", [(0, 0.0, "plain"), (9, 0.0, "plain"), (9, 0.9, "momentum"),
                                             (9, 0.9, "shifted"), (9, 0.999, "shifted"),
                                             (gaussian_delay(5), 0.0, "plain"),
                                             (geometric_delay(0.8), 0.5, "momentum")])
def test_all_roots_inside_unit_circle_as_alpha_goes_to_zero(delay, m, variant):
    alpha = critical_alpha(delay, m, variant)
    for scale in (1e-6, 1e-3, 0.5):
        assert spectral_radius(scale * alpha, delay, m, variant) < 1.0
    # at α = 0 the only unit-modulus root of P is the simple root z = 1
    P, _ = characteristic_polynomial(delay, m, variant)
    roots = np.roots(P)
    on_circle = roots[np.abs(np.abs(roots) - 1.0) < 1e-9]
    assert len(on_circle) == 1 and abs(on_circle[0] - 1.0) < 1e-9


# ------------------------------------------------------------------------------------------------
# Brute force: iterate the paper's scalar recurrences just below and just above the edge
# ------------------------------------------------------------------------------------------------


BRUTE_FORCE = [
    ("eq3", lambda a: eq3(a, 0), 0, 0.0, "plain", 2),
    ("eq3", lambda a: eq3(a, 1), 1, 0.0, "plain", 2),
    ("eq3", lambda a: eq3(a, 4), 4, 0.0, "plain", 5),
    ("eq3", lambda a: eq3(a, 16), 16, 0.0, "plain", 17),
    ("eq25", lambda a: eq25(a, 0, 0.5), 0, 0.5, "momentum", 2),
    ("eq25", lambda a: eq25(a, 4, 0.5), 4, 0.5, "momentum", 6),
    ("eq25", lambda a: eq25(a, 8, 0.9), 8, 0.9, "momentum", 10),
    ("eq10", lambda a: eq10(a, 0, 0.5), 0, 0.5, "shifted", 3),
    ("eq10", lambda a: eq10(a, 4, 0.5), 4, 0.5, "shifted", 7),
    ("eq10", lambda a: eq10(a, 8, 0.9), 8, 0.9, "shifted", 11),
    ("eq18", lambda a: eq18(a, uniform_delay(1, 6)), uniform_delay(1, 6), 0.0, "plain", 8),
    ("eq18", lambda a: eq18(a, gaussian_delay(4)), gaussian_delay(4), 0.0, "plain", 10),
    ("eq18", lambda a: eq18(a, geometric_delay(0.5)), geometric_delay(0.5), 0.0, "plain", 42),
    ("eq25-stochastic", lambda a: eq25_stochastic(a, uniform_delay(2, 5), 0.7), uniform_delay(2, 5), 0.7,
     "momentum", 7),
]


@pytest.mark.parametrize("name,make,delay,m,variant,history", BRUTE_FORCE, ids=[b[0] for b in BRUTE_FORCE])
def test_recurrence_decays_below_edge_and_grows_above(name, make, delay, m, variant, history):
    alpha = critical_alpha(delay, m, variant)
    for factor, grows in ((0.97, False), (1.03, True)):
        # enough steps for a factor e^12 in the slowest mode (rate from the roots; the test is on x)
        rate = abs(math.log(spectral_radius(factor * alpha, delay, m, variant)))
        steps = min(200_000, int(12 / rate) + 200)
        x = iterate(make(factor * alpha), history, steps)
        start, end = np.abs(x[:history]).max(), np.abs(x[-history - 50:]).max()
        if grows:
            assert end > 1e3 * start, (name, factor, end / start)
        else:
            assert end < 1e-3 * start, (name, factor, end / start)


# ------------------------------------------------------------------------------------------------
# Polynomials, distributions, learning rates
# ------------------------------------------------------------------------------------------------


def test_characteristic_polynomials_have_the_papers_coefficients():
    P, Q = characteristic_polynomial(3)  # z^4 − z^3 + α
    np.testing.assert_array_equal(P, [1, -1, 0, 0, 0])
    np.testing.assert_array_equal(Q, [0, 0, 0, 0, 1])
    P, Q = characteristic_polynomial(3, 0.5, "momentum")  # z^4 − 1.5 z^3 + 0.5 z^2 + 0.5 α
    np.testing.assert_array_equal(P, [1, -1.5, 0.5, 0, 0])
    np.testing.assert_array_equal(Q, [0, 0, 0, 0, 0.5])
    P, Q = characteristic_polynomial(0, 0.5, "momentum")  # times z: z^2 − 1.5 z + 0.5 + 0.5 α z
    np.testing.assert_array_equal(P, [1, -1.5, 0.5])
    np.testing.assert_array_equal(Q, [0, 0.5, 0])
    P, Q = characteristic_polynomial(3, 0.5, "shifted")  # z^5 − z^4 + (0.5 α − 0.5) z + 0.5
    np.testing.assert_array_equal(P, [1, -1, 0, 0, -0.5, 0.5])
    np.testing.assert_array_equal(Q, [0, 0, 0, 0, 0.5, 0])
    P, Q = characteristic_polynomial([0.25, 0.5, 0.25])  # z^3 − z^2 + α(0.25 z^2 + 0.5 z + 0.25)
    np.testing.assert_array_equal(P, [1, -1, 0, 0])
    np.testing.assert_array_equal(Q, [0, 0.25, 0.5, 0.25])
    P, Q = characteristic_polynomial([0.25, 0.75], 0.5, "momentum")
    np.testing.assert_array_equal(P, [1, -1.5, 0.5, 0])
    np.testing.assert_array_equal(Q, [0, 0.125, 0.375, 0])


def test_gaussian_delay_is_appendix_c_discretisation():
    for mu in (1, 2, 5, 30):
        p = gaussian_delay(mu)
        assert p.shape == (2 * mu + 1,) and p[0] == 0.0
        raw = np.array([ndtr(k + 0.5 - mu) - ndtr(k - 0.5 - mu) for k in range(1, 2 * mu + 1)])
        np.testing.assert_allclose(p[1:], raw / raw.sum(), rtol=1e-13)
        assert p.sum() == pytest.approx(1.0, abs=1e-14)
    assert mean_delay(gaussian_delay(30)) == pytest.approx(30.0, abs=1e-6)
    assert mean_delay(gaussian_delay(1)) > 1.3  # support {1, 2} is centred on 1.5


def test_geometric_delay_truncation_and_mean():
    for q in (0.25, 0.5, 0.9):
        p = geometric_delay(q)
        K = len(p) - 1
        assert q ** (K + 1) < 1e-12 <= q ** K  # first index whose tail is below 1e-12
        assert p.sum() == pytest.approx(1.0, abs=1e-15)
        np.testing.assert_allclose(p[1:] / p[:-1], q, rtol=1e-12)
        assert mean_delay(p) == pytest.approx(q / (1 - q), rel=1e-9)
    np.testing.assert_array_equal(geometric_delay(0.0), [1.0])


def test_uniform_delay_and_mean():
    p = uniform_delay(1, 8)
    np.testing.assert_allclose(p, [0] + [1 / 8] * 8)
    assert mean_delay(p) == pytest.approx(4.5)
    assert mean_delay(7) == 7.0


def test_recommended_lr_and_eq8():
    assert recommended_lr(0.1, 32) == pytest.approx(0.1 * math.sin(math.pi / 130), rel=1e-12)
    assert eq8_lr(0.1, 32) == pytest.approx(math.pi * 0.1 / 130, rel=1e-15)
    assert recommended_lr(0.1, 0) == pytest.approx(0.1, rel=1e-15)
    # eq. 8 is eq. 7's first-order rule: the two agree to O(1/τ²)
    for tau in (8, 64, 512):
        assert abs(recommended_lr(1.0, tau) / eq8_lr(1.0, tau) - 1) < 1.0 / (tau + 0.5) ** 2
    m = 0.9
    assert recommended_lr(0.1, 4, m, "momentum") == pytest.approx(
        0.1 * critical_alpha(4, m, "momentum") / momentum_alpha_tau0(m), rel=1e-12)
    assert eq6_alpha(5) == pytest.approx(2 * math.sin(math.pi / 22), rel=1e-15)


# ------------------------------------------------------------------------------------------------
# Bad input: ValueError naming the problem
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,match", [
    (lambda: critical_alpha(-1), "tau"),
    (lambda: critical_alpha(2.5), "tau"),
    (lambda: critical_alpha(True), "tau"),
    (lambda: critical_alpha("3"), "delay"),
    (lambda: critical_alpha(3, 1.0, "momentum"), "momentum"),
    (lambda: critical_alpha(3, -1.0, "momentum"), "momentum"),
    (lambda: critical_alpha(3, 0.5), "plain"),
    (lambda: critical_alpha(3, 0.5, "nesterov"), "variant"),
    (lambda: critical_alpha([0.5, 0.6]), "sum to 1"),
    (lambda: critical_alpha([1.2, -0.2]), "non-negative"),
    (lambda: critical_alpha([]), "non-empty"),
    (lambda: critical_alpha([[0.5, 0.5]]), "1-D"),
    (lambda: critical_alpha([0.5, float("nan")]), "finite"),
    (lambda: critical_alpha([0.5, 0.5], 0.5, "shifted"), "shifted"),
    (lambda: critical_alpha(3, method="bisection"), "method"),
    (lambda: spectral_radius(float("inf"), 3), "alpha"),
    (lambda: recommended_lr(0.0, 3), "eta0"),
    (lambda: eq8_lr(0.1, -1), "tau"),
    (lambda: uniform_delay(3, 1), "low <= high"),
    (lambda: uniform_delay(-1, 1), "low"),
    (lambda: gaussian_delay(0.2), "mean"),
    (lambda: geometric_delay(1.0), "q"),
])
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_accepts_integer_valued_floats_and_numpy_scalars():
    assert critical_alpha(3.0) == critical_alpha(3) == critical_alpha(np.int64(3))
    assert critical_alpha(np.array(3)) == critical_alpha(3)
    # trailing zero probabilities only add roots at z = 0
    assert rel_err(critical_alpha([0.5, 0.5, 0.0, 0.0]), critical_alpha([0.5, 0.5])) < 1e-15
    assert theory.check_probabilities([0.5, 0.5 + 5e-10]).size == 2  # within 1e-9 of 1
