"""DelayedSGD against the paper's recurrences (eq. 2, 22, 10) and its characteristic equations."""

import io
import math

import numpy as np
import pytest
import torch
from scipy import stats

from delay_stability.asgd import DelayedSGD
from oracles import brute_force_edge, spectral_radius

M_TEST = 0.6


# ------------------------------------------------------------------ helpers


def quadratic(eigenvalues, seed=0):
    """A = Q diag(eigenvalues) Q^T (float64) and a starting point w0."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = q @ np.diag(eigenvalues) @ q.T
    return torch.tensor((a + a.T) / 2), torch.tensor(rng.standard_normal(d))


def run_optimizer(a, w0, steps, **kwargs):
    """Iterates w_0..w_T of DelayedSGD on f(w) = 1/2 w^T A w, and the staleness of each update."""
    w = torch.nn.Parameter(w0.clone())
    opt = DelayedSGD([w], **kwargs)
    traj, stale = [w0.clone()], []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * w @ (a @ w)).backward()
        opt.step()
        traj.append(w.detach().clone())
        stale.append(opt.last_staleness)
    return torch.stack(traj), stale, opt


def recurrence(a, w0, staleness, lr, variant="plain", momentum=0.0, dampening=True, weight_decay=0.0):
    """The explicit recurrences, with tau_t the staleness of the update at step t:

    plain (eq. 2):     x_{t+1} = x_t - c (A x_{t-tau} + wd x_t)
    momentum (eq. 22): x_{t+1} = x_t + m (x_t - x_{t-1}) - c (A x_{t-tau} + wd x_t)
    shifted (eq. 10):  x_{t+1} = x_t + m (x_{t-tau} - x_{t-tau-1}) - c (A x_{t-tau} + wd x_t)
    with c = eta (1-m) (dampening) or eta, and x_{-1} = x_0 (all velocities start at zero).
    """
    a, x = a.numpy(), [w0.numpy().copy()]
    c = lr * (1 - momentum) if dampening else lr
    for t, tau in enumerate(staleness):
        s = t - tau
        step = -c * (a @ x[s] + weight_decay * x[t])
        if variant == "momentum" and t >= 1:
            step = step + momentum * (x[t] - x[t - 1])
        if variant == "shifted" and s >= 1:
            step = step + momentum * (x[s] - x[s - 1])
        x.append(x[t] + step)
    return np.stack(x)


def constant_staleness(tau, steps):
    """Round robin: the first tau+1 updates use g(w_0), then g(w_{t-tau})."""
    return [t - max(t - tau, 0) for t in range(steps)]


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("tau", [0, 1, 3, 8])
@pytest.mark.parametrize("variant", ["plain", "momentum", "shifted"])
def test_trajectory_equals_recurrence(tau, variant):
    a, w0 = quadratic([1.0, 0.6, 0.3, 0.1])
    m = 0.0 if variant == "plain" else M_TEST
    lr, steps = 0.05, 150
    traj, stale, _ = run_optimizer(a, w0, steps, lr=lr, delay=tau, variant=variant, momentum=m)
    assert stale == constant_staleness(tau, steps)
    expected = recurrence(a, w0, stale, lr, variant, m)
    np.testing.assert_allclose(traj.numpy(), expected, rtol=0, atol=1e-12)
    assert np.abs(expected[-1]).max() > 1e-3  # the comparison is not between two zeros


@pytest.mark.parametrize("variant", ["momentum", "shifted"])
def test_no_dampening_and_weight_decay(variant):
    a, w0 = quadratic([1.0, 0.5, 0.2])
    lr, m, wd, tau, steps = 0.02, 0.5, 0.3, 3, 120
    traj, stale, _ = run_optimizer(
        a, w0, steps, lr=lr, delay=tau, variant=variant, momentum=m, dampening=False, weight_decay=wd
    )
    expected = recurrence(a, w0, stale, lr, variant, m, dampening=False, weight_decay=wd)
    np.testing.assert_allclose(traj.numpy(), expected, rtol=0, atol=1e-12)


def test_plain_weight_decay_on_current_weights():
    a, w0 = quadratic([1.0, 0.4])
    traj, stale, _ = run_optimizer(a, w0, 100, lr=0.1, delay=4, weight_decay=0.5)
    expected = recurrence(a, w0, stale, 0.1, weight_decay=0.5)
    np.testing.assert_allclose(traj.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["plain", "momentum", "shifted"])
@pytest.mark.parametrize("schedule", ["random", "distribution", "gaussian", "compute_time"])
def test_stochastic_schedules_follow_their_recorded_staleness(schedule, variant):
    """eq. 18 (and its momentum forms) with tau_t the staleness the optimizer reports."""
    a, w0 = quadratic([1.0, 0.5, 0.25])
    m = 0.0 if variant == "plain" else M_TEST
    kw = dict(delay=[0.1, 0.2, 0.0, 0.4, 0.3]) if schedule == "distribution" else dict(workers=5)
    traj, stale, _ = run_optimizer(
        a, w0, 200, lr=0.03, schedule=schedule, variant=variant, momentum=m, seed=3, **kw
    )
    assert len(set(stale)) > 3  # the delays really vary
    expected = recurrence(a, w0, stale, 0.03, variant, m)
    np.testing.assert_allclose(traj.numpy(), expected, rtol=0, atol=1e-12)


def test_distribution_one_hot_is_constant_delay_and_one_worker_is_sgd():
    a, w0 = quadratic([1.0, 0.5])
    rr, _, _ = run_optimizer(a, w0, 60, lr=0.05, delay=3, variant="shifted", momentum=0.5)
    dist, _, _ = run_optimizer(a, w0, 60, lr=0.05, delay=[0, 0, 0, 1.0], variant="shifted", momentum=0.5)
    assert torch.equal(rr, dist)
    sgd, _, _ = run_optimizer(a, w0, 60, lr=0.05, delay=0)
    one, _, _ = run_optimizer(a, w0, 60, lr=0.05, workers=1, schedule="random")
    assert torch.equal(sgd, one)


def test_param_groups_use_their_own_lr_and_momentum():
    """Block-diagonal A: each group follows its own recurrence with its own eta and m."""
    a1, w1 = quadratic([1.0, 0.3], seed=1)
    a2, w2 = quadratic([0.8, 0.2], seed=2)
    p1, p2 = torch.nn.Parameter(w1.clone()), torch.nn.Parameter(w2.clone())
    opt = DelayedSGD(
        [{"params": [p1]}, {"params": [p2], "lr": 0.02, "momentum": 0.3}],
        lr=0.1, delay=2, variant="momentum", momentum=0.7,
    )
    traj1, traj2 = [w1.clone()], [w2.clone()]
    for _ in range(80):
        opt.zero_grad()
        (0.5 * p1 @ (a1 @ p1) + 0.5 * p2 @ (a2 @ p2)).backward()
        opt.step()
        traj1.append(p1.detach().clone())
        traj2.append(p2.detach().clone())
    stale = constant_staleness(2, 80)
    np.testing.assert_allclose(torch.stack(traj1), recurrence(a1, w1, stale, 0.1, "momentum", 0.7), atol=1e-12, rtol=0)
    np.testing.assert_allclose(torch.stack(traj2), recurrence(a2, w2, stale, 0.02, "momentum", 0.3), atol=1e-12, rtol=0)


def test_unused_parameter_gets_zero_gradient():
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = DelayedSGD([used, unused], lr=0.1, delay=1)
    for _ in range(3):
        opt.zero_grad()
        used.sum().backward()
        opt.step()
    assert torch.equal(unused.detach(), torch.ones(3))
    assert torch.allclose(used.detach(), torch.full((2,), 0.7))


# ------------------------------------------------------------------ stability edge


@pytest.mark.parametrize("tau", [0, 3])
def test_local_root_finder_matches_closed_forms(tau):
    assert brute_force_edge("plain", tau, 0.0) == pytest.approx(2 * math.sin(math.pi / (4 * tau + 2)), rel=1e-9)
    if tau == 0:
        m = 0.5
        assert brute_force_edge("momentum", 0, m) == pytest.approx(2 * (1 + m) / (1 - m), rel=1e-9)
    try:  # the package's own theory module, where it exists, must agree
        from delay_stability.theory import critical_alpha as theory_alpha
    except ImportError:
        return
    assert theory_alpha(tau) == pytest.approx(brute_force_edge("plain", tau, 0.0), rel=1e-6)
    for variant in ("momentum", "shifted"):
        assert theory_alpha(tau, 0.5, variant) == pytest.approx(brute_force_edge(variant, tau, 0.5), rel=1e-6)


@pytest.mark.parametrize("variant", ["plain", "momentum", "shifted"])
@pytest.mark.parametrize("tau", [2, 5])
def test_decays_below_and_grows_above_the_edge(variant, tau):
    """At 0.95 alpha*/lambda_max the iterates decay; at 1.05 alpha*/lambda_max they grow."""
    m = 0.0 if variant == "plain" else 0.5
    lam = 3.0
    a, w0 = quadratic([lam, lam / 2])
    alpha_star = brute_force_edge(variant, tau, m)
    for factor, stable in ((0.95, True), (1.05, False)):
        alpha = factor * alpha_star
        rho = max(spectral_radius(variant, tau, alpha, m), spectral_radius(variant, tau, alpha / 2, m))
        assert (rho < 1) == stable
        steps = min(20000, int(math.ceil(10 / abs(math.log(rho)))) + 4 * (tau + 2))
        traj, _, _ = run_optimizer(a, w0, steps, lr=alpha / lam, delay=tau, variant=variant, momentum=m)
        size = traj[-(tau + 3):].norm(dim=1).max().item() / w0.norm().item()
        if stable:
            assert size < 1e-2
        else:
            assert size > 1e2


# ------------------------------------------------------------------ staleness statistics


def _staleness_counts(steps, warmup=0, **kwargs):
    """Staleness histogram of `steps` updates, after `warmup` updates left out."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = DelayedSGD([p], lr=1.0, **kwargs)
    p.grad = torch.zeros(1)
    for _ in range(warmup):
        opt.step()
    before = opt.staleness_histogram()
    for _ in range(steps):
        opt.step()
    counts = opt.staleness_histogram()
    counts[: before.size] -= before
    return counts, opt


def _chi_square_pvalue(counts, probs, min_expected=5.0):
    """Pearson chi-square p-value, the tail merged into one bin where expected counts are small."""
    n = counts.sum()
    k = len(probs)
    counts = np.concatenate([counts, np.zeros(max(0, k - len(counts)))])
    observed, expected = list(counts[:k]), list(n * np.asarray(probs))
    observed[-1] += counts[k:].sum()
    assert all(o == 0 for o, e in zip(observed, expected) if e == 0)  # impossible delays never occur
    observed = [o for o, e in zip(observed, expected) if e > 0]
    expected = [e for e in expected if e > 0]
    while len(expected) > 2 and expected[-1] < min_expected:
        tail_expected, tail_observed = expected.pop(), observed.pop()
        expected[-1] += tail_expected
        observed[-1] += tail_observed
    return stats.chisquare(observed, expected).pvalue


def test_random_schedule_staleness_is_geometric_with_mean_m_minus_1():
    workers, steps = 4, 40000
    counts, opt = _staleness_counts(steps, workers=workers, schedule="random", seed=7)
    q = 1 - 1 / workers
    kmax = 60
    probs = [(1 - q) * q**k for k in range(kmax)]
    probs[-1] += q**kmax  # P(tau >= kmax - 1) in the last bin
    assert counts.sum() == steps
    assert _chi_square_pvalue(counts, probs) > 1e-3
    se = math.sqrt(workers * (workers - 1) / steps)
    assert abs(opt.mean_staleness() - (workers - 1)) < 5 * se


def test_distribution_schedule_matches_its_probabilities():
    probs = [0.05, 0.25, 0.0, 0.5, 0.2]
    counts, _ = _staleness_counts(30000, warmup=len(probs), delay=probs, seed=11)
    assert counts.sum() == 30000 and counts[2] == 0
    assert _chi_square_pvalue(counts, probs) > 1e-3


def test_round_robin_histogram_counts_warmup_then_constant():
    counts, opt = _staleness_counts(100, delay=5)
    assert counts.tolist() == [1, 1, 1, 1, 1, 95]
    assert opt.mean_staleness() == pytest.approx((0 + 1 + 2 + 3 + 4 + 5 * 95) / 100)


# ------------------------------------------------------------------ state, memory, validation


@pytest.mark.parametrize("schedule", ["round_robin", "random", "distribution", "iid", "gaussian", "compute_time",
                                      "replay"])
def test_state_dict_resumes_bit_for_bit(schedule):
    a, w0 = quadratic([1.0, 0.5, 0.2])
    kw = {"round_robin": dict(delay=4), "random": dict(workers=4), "distribution": dict(delay=[0.2, 0.3, 0.5]),
          "iid": dict(delay=[0.2, 0.3, 0.5]), "gaussian": dict(workers=4, spread=1.5),
          "compute_time": dict(workers=4, compute_time={"law": "normal", "mean": 1.0, "std": 0.3}),
          "replay": dict(workers=3, landing_order=[0, 2, 2, 1, 0, 1, 1, 2, 0, 0, 2])}
    kw = dict(kw[schedule], schedule=schedule, variant="shifted", momentum=0.5, lr=0.05, seed=5)
    full, _, _ = run_optimizer(a, w0, 70, **kw)

    w = torch.nn.Parameter(w0.clone())
    opt = DelayedSGD([w], **kw)
    for _ in range(30):
        opt.zero_grad()
        (0.5 * w @ (a @ w)).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"w": w.detach().clone(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    w2 = torch.nn.Parameter(saved["w"])
    opt2 = DelayedSGD([w2], **dict(kw, seed=999))  # the seed must come from the state
    opt2.load_state_dict(saved["opt"])
    for _ in range(40):
        opt2.zero_grad()
        (0.5 * w2 @ (a @ w2)).backward()
        opt2.step()
    assert torch.equal(w2.detach(), full[-1])
    assert opt2.staleness_histogram().sum() == 70


def test_load_state_dict_rejects_a_different_configuration():
    p = torch.nn.Parameter(torch.zeros(3))
    state = DelayedSGD([p], lr=0.1, delay=3).state_dict()
    with pytest.raises(ValueError, match="num_slots"):
        DelayedSGD([p], lr=0.1, delay=4).load_state_dict(state)
    with pytest.raises(ValueError, match="in-flight"):
        DelayedSGD([p], lr=0.1, delay=3).load_state_dict(torch.optim.SGD([p], lr=0.1).state_dict())


def test_buffer_bytes_and_flat_buffer_is_reused():
    model = torch.nn.Linear(10, 3)  # 33 parameters
    opt = DelayedSGD(model.parameters(), lr=0.1, delay=7, variant="shifted", momentum=0.5)
    assert opt.buffer_bytes() == (8 + 8 + 1) * 33 * 4  # slots, velocities, the weight row
    assert DelayedSGD(model.parameters(), lr=0.1, delay=7).buffer_bytes() == (8 + 1) * 33 * 4
    ptr = opt._grads.data_ptr()
    for _ in range(20):
        opt.zero_grad()
        model(torch.randn(4, 10)).sum().backward()
        opt.step()
    assert opt._grads.data_ptr() == ptr and opt._grads.shape == (8, 33)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-1.0), "lr"),
        (dict(lr=0.1, delay=-1), "delay"),
        (dict(lr=0.1, delay=1.5), "delay"),
        (dict(lr=0.1, workers=0, schedule="random"), "workers"),
        (dict(lr=0.1, variant="nesterov"), "nesterov"),
        (dict(lr=0.1, schedule="fifo"), "fifo"),
        (dict(lr=0.1, momentum=0.9), "variant"),
        (dict(lr=0.1, momentum=1.0, variant="momentum"), "momentum"),
        (dict(lr=0.1, delay=[0.5, 0.6]), "sum to 1"),
        (dict(lr=0.1, delay=[0.5, -0.5, 1.0]), ">= 0"),
        (dict(lr=0.1, delay=3, workers=2), "disagree"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        DelayedSGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)


# ------------------------------------------------------------------ one kernel, velocity conventions


def _explicit_eq2(params0, grad_fn, steps, lr, tau, wd):
    """eq. 2 written out per parameter tensor (round robin: g(w_{max(t - tau, 0)})), in the dtype of
    the parameters: w <- (1 - eta wd) w - eta g, as DelayedSGD has always computed it."""
    history = [[p.clone() for p in params0]]
    w = [p.clone() for p in params0]
    for t in range(steps):
        g = grad_fn(history[max(t - tau, 0)])
        w = [(wi * (1.0 - lr * wd) if wd else wi).add(gi, alpha=-lr) for wi, gi in zip(w, g)]
        history.append([wi.clone() for wi in w])
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_plain_constant_lr_is_eq2_bit_for_bit(dtype, wd):
    """The plain variant at constant eta through the kernel is exactly eq. 2 (not just to rounding)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).to(dtype)
    x, y = torch.randn(16, 5, dtype=dtype), torch.randint(0, 3, (16,))
    names = [n for n, _ in net.named_parameters()]

    def grad_fn(ws):
        ws = [w.detach().requires_grad_() for w in ws]
        out = torch.func.functional_call(net, dict(zip(names, ws)), (x,))
        return torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), ws)

    params0 = [p.detach().clone() for p in net.parameters()]
    expected = _explicit_eq2(params0, grad_fn, 40, 0.3, 3, wd)
    opt = DelayedSGD(net.parameters(), lr=0.3, delay=3, weight_decay=wd)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for p, e in zip(net.parameters(), expected):
        assert torch.equal(p.detach(), e)


@pytest.mark.parametrize("variant", ["momentum", "shifted"])
@pytest.mark.parametrize("schedule", ["round_robin", "random", "gaussian"])
def test_gradient_and_step_units_agree_at_constant_lr(variant, schedule):
    """At constant eta, u in gradient units and v = -eta u (the older form) are the same dynamics."""
    a, w0 = quadratic([1.0, 0.5, 0.25])
    kw = dict(lr=0.04, workers=4, schedule=schedule, variant=variant, momentum=0.7, weight_decay=0.1, seed=2)
    new, s1, opt = run_optimizer(a, w0, 300, **kw)
    old, s2, _ = run_optimizer(a, w0, 300, velocity="step", **kw)
    assert s1 == s2 and opt.velocity_units == "gradient"
    np.testing.assert_allclose(new.numpy(), old.numpy(), rtol=0, atol=1e-12)
    assert np.abs(old[-1].numpy()).max() > 1e-3


def _lr_at(t):
    """Warm-up over 20 steps from 0.02, then 0.1, decays x0.1 at steps 60 and 100."""
    if t < 20:
        return 0.02 + (0.1 - 0.02) * (t + 1) / 20
    return 0.1 * (0.1 ** ((t >= 60) + (t >= 100)))


@pytest.mark.parametrize("tau", [1, 4])
def test_shifted_momentum_with_a_schedule_is_per_worker_torch_sgd(tau):
    """Shifted momentum (gradient units, torch's start) = M = tau + 1 torch.optim.SGD(momentum=m,
    dampening=m) optimizers, one per worker, served in turn, each step at the current eta."""
    a, w0 = quadratic([2.0, 1.0, 0.3], seed=4)
    m, steps, K = 0.8, 140, tau + 1
    w = torch.nn.Parameter(w0.clone())
    opt = DelayedSGD([w], lr=_lr_at(0), delay=tau, variant="shifted", momentum=m, velocity_start="gradient")
    for t in range(steps):
        opt.param_groups[0]["lr"] = _lr_at(t)
        opt.zero_grad()
        (0.5 * w @ (a @ w)).backward()
        opt.step()

    ref = torch.nn.Parameter(w0.clone())
    workers = [torch.optim.SGD([ref], lr=0.1, momentum=m, dampening=m) for _ in range(K)]
    history = [w0.clone()]
    for t in range(steps):
        worker = workers[(t + 1) % K]  # the slot DelayedSGD's round robin lands at step t
        worker.param_groups[0]["lr"] = _lr_at(t)
        ref.grad = a @ history[max(t - tau, 0)]
        worker.step()
        history.append(ref.detach().clone())
    np.testing.assert_allclose(w.detach().numpy(), ref.detach().numpy(), rtol=0, atol=1e-12)
    assert np.abs(ref.detach().numpy()).max() > 1e-3
    # the older convention (the velocity keeps the eta it was written with) is another trajectory
    w_old = torch.nn.Parameter(w0.clone())
    old = DelayedSGD([w_old], lr=_lr_at(0), delay=tau, variant="shifted", momentum=m, velocity="step")
    for t in range(steps):
        old.param_groups[0]["lr"] = _lr_at(t)
        old.zero_grad()
        (0.5 * w_old @ (a @ w_old)).backward()
        old.step()
    assert np.abs(w_old.detach().numpy() - ref.detach().numpy()).max() > 1e-6


def test_server_momentum_with_a_schedule_is_torch_sgd_on_stale_gradients():
    a, w0 = quadratic([2.0, 1.0, 0.3], seed=5)
    m, steps, tau = 0.6, 120, 2
    w = torch.nn.Parameter(w0.clone())
    opt = DelayedSGD([w], lr=0.1, delay=tau, variant="momentum", momentum=m, dampening=False,
                     velocity_start="gradient", weight_decay=0.05)
    ref = torch.nn.Parameter(w0.clone())
    sgd = torch.optim.SGD([ref], lr=0.1, momentum=m, weight_decay=0.05)
    history = [w0.clone()]
    for t in range(steps):
        opt.param_groups[0]["lr"] = sgd.param_groups[0]["lr"] = _lr_at(t)
        opt.zero_grad()
        (0.5 * w @ (a @ w)).backward()
        opt.step()
        ref.grad = a @ history[max(t - tau, 0)]
        sgd.step()
        history.append(ref.detach().clone())
    np.testing.assert_allclose(w.detach().numpy(), ref.detach().numpy(), rtol=0, atol=1e-12)


def test_a_checkpoint_of_the_old_velocity_convention_is_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    state = DelayedSGD([p], lr=0.1, delay=2, variant="momentum", momentum=0.5).state_dict()
    del state["delayed"]["velocity_units"]  # as written before velocities had units
    with pytest.raises(ValueError, match="velocity='step'"):
        DelayedSGD([p], lr=0.1, delay=2, variant="momentum", momentum=0.5).load_state_dict(state)
    DelayedSGD([p], lr=0.1, delay=2, variant="momentum", momentum=0.5, velocity="step").load_state_dict(state)
    plain = DelayedSGD([p], lr=0.1, delay=2).state_dict()
    del plain["delayed"]["velocity_units"]
    DelayedSGD([p], lr=0.1, delay=2).load_state_dict(plain)  # no velocity: nothing to convert


def test_kernel_batches_members_with_their_own_hyperparameters():
    """asgd.update on (R, P) rows with (R, 1) hyperparameters = R separate calls."""
    from delay_stability.asgd import update

    gen = torch.Generator().manual_seed(0)
    w, g, u = (torch.randn(3, 6, generator=gen, dtype=torch.float64) for _ in range(3))
    hyper = dict(lr=[0.1, 0.2, 0.05], momentum=[0.0, 0.5, 0.9], dampening=[0.0, 0.5, 0.0], weight_decay=[0.0, 0.1, 0.2])
    for velocity in ("gradient", "step"):
        wb, ub = w.clone(), u.clone()
        update(wb, g, ub, variant="momentum", velocity=velocity,
               **{k: torch.tensor(v, dtype=torch.float64).unsqueeze(1) for k, v in hyper.items()})
        for r in range(3):
            wr, ur = w[r].clone(), u[r].clone()
            update(wr, g[r], ur, variant="momentum", velocity=velocity, **{k: v[r] for k, v in hyper.items()})
            np.testing.assert_allclose(wb[r].numpy(), wr.numpy(), rtol=0, atol=1e-15)
            np.testing.assert_allclose(ub[r].numpy(), ur.numpy(), rtol=0, atol=1e-15)


# ------------------------------------------------------------------ worker schedules


WORKER_KW = {
    "round_robin": dict(),
    "random": dict(),
    "gaussian": dict(),
    "compute_time": dict(compute_time={"law": "exponential", "mean": 1.0}),
    "replay": dict(landing_order=[3, 1, 1, 0, 2, 3, 0, 2, 2, 1, 0, 3, 3]),
}


def _landing_counts(steps, **kw):
    """Run DelayedSGD (plain, lr 1) where the gradient of step t is e_t: the final -w counts how
    many times each step's gradient landed."""
    w = torch.nn.Parameter(torch.zeros(steps, dtype=torch.float64))
    opt = DelayedSGD([w], lr=1.0, **kw)
    for t in range(steps):
        opt.zero_grad()
        w[t].backward()
        opt.step()
    return (-w.detach()).numpy(), opt


@pytest.mark.parametrize("schedule", list(WORKER_KW))
def test_worker_schedules_land_every_gradient_exactly_once(schedule):
    M, steps = 4, 600
    counts, opt = _landing_counts(steps, workers=M, schedule=schedule, seed=1, **WORKER_KW[schedule])
    assert counts[0] == M  # every worker starts with g(w_0)
    rest = counts[1:]
    assert set(np.unique(rest)) <= {0.0, 1.0}  # never twice
    assert int((rest == 0).sum()) == M - 1  # the M - 1 still in flight, every other one landed once
    assert opt.staleness_histogram().sum() == steps


def test_iid_ring_drops_and_repeats_gradients():
    """The eq. 18 model is not a model of workers: some gradients never land, some land twice."""
    counts, _ = _landing_counts(2000, delay=[0.1, 0.2, 0.4, 0.2, 0.1], schedule="iid", seed=3)
    rest = counts[1:-5]
    assert (rest == 0).sum() > 100 and (rest >= 2).sum() > 100


def gaussian_rule_law(M, spread, cap):
    """The stationary law of the landed staleness under the authors' Gaussian rule, by brute force:
    the Markov chain on the (sorted) staleness vector of the M workers, truncated at ``cap``."""
    from delay_stability.asgd import gaussian_landing_probabilities

    start = (0,) * M
    index, states, edges = {start: 0}, [start], []
    i = 0
    while i < len(states):
        s = states[i]
        p = gaussian_landing_probabilities(s, M, spread)
        for j, pj in enumerate(p):
            nxt = tuple(sorted([0] + [min(x + 1, cap) for k, x in enumerate(s) if k != j]))
            if nxt not in index:
                index[nxt] = len(states)
                states.append(nxt)
            edges.append((i, index[nxt], pj, s[j]))
        i += 1
    n = len(states)
    P = np.zeros((n, n))
    for a_, b_, p, _ in edges:
        P[a_, b_] += p
    pi = np.full(n, 1.0 / n)
    for _ in range(5000):
        pi = pi @ P
    law = np.zeros(cap + 1)
    for a_, _, p, k in edges:
        law[k] += pi[a_] * p
    return law / law.sum()


def test_gaussian_rule_staleness_matches_its_law_with_mean_m_minus_1():
    M, spread, steps = 4, 1.0, 30000
    law = gaussian_rule_law(M, spread, cap=14)
    assert abs(np.dot(np.arange(law.size), law) - (M - 1)) < 1e-9  # every gradient lands once: mean M - 1
    counts, opt = _staleness_counts(steps, workers=M, schedule="gaussian", spread=spread, seed=4)
    assert counts.size <= law.size  # nothing beyond the truncation
    assert _chi_square_pvalue(np.pad(counts, (0, law.size - counts.size)), law) > 1e-3
    assert abs(opt.mean_staleness() - (M - 1)) < 0.05
    assert counts[M - 1] / counts.sum() > 0.3  # concentrated at M - 1, unlike the geometric law (0.105)


def test_gaussian_landing_probabilities_are_the_authors_rule():
    from delay_stability.asgd import gaussian_landing_probabilities

    s, M = [0, 3, 5, 9], 4
    expected = stats.norm.cdf(s, loc=M, scale=M / 4)
    np.testing.assert_allclose(gaussian_landing_probabilities(s, M), expected / expected.sum(), rtol=1e-12)


def test_exponential_compute_times_give_the_uniform_rules_geometric_law():
    M, steps = 4, 30000
    counts, opt = _staleness_counts(steps, workers=M, schedule="compute_time",
                                    compute_time={"law": "exponential", "mean": 2.0}, seed=8)
    q = 1 - 1 / M
    kmax = 40
    probs = [(1 - q) * q**k for k in range(kmax)]
    probs[-1] += q**kmax
    assert _chi_square_pvalue(counts, probs) > 1e-3
    assert abs(opt.mean_staleness() - (M - 1)) < 0.1


def test_nearly_equal_compute_times_concentrate_at_m_minus_1():
    """Workers of (almost) equal speed land nearly in turn: staleness concentrates at M - 1 (the
    order still drifts: the finish times are sums of independent draws)."""
    counts, opt = _staleness_counts(2000, workers=5, schedule="compute_time",
                                    compute_time={"law": "uniform", "low": 1.0, "high": 1.001}, seed=0)
    assert counts.argmax() == 4 and counts[4] / counts.sum() > 0.6
    assert abs(opt.mean_staleness() - 4) < 0.05


def test_replay_of_a_staleness_log_reproduces_its_staleness(tmp_path):
    from delay_stability.staleness import landing_order

    M, steps = 5, 400
    p = torch.nn.Parameter(torch.zeros(2))
    opt = DelayedSGD([p], lr=0.01, workers=M, schedule="gaussian", seed=6)
    rows = []
    for t in range(steps):
        p.grad = torch.ones(2)
        opt.step()
        rows.append(f"{t},{opt.last_worker + 1},0,{t - opt.last_staleness},{opt.last_staleness},0.0")
    log = tmp_path / "staleness.csv"
    log.write_text("update,worker,step,pulled,staleness,time\n" + "\n".join(rows) + "\n")
    order = landing_order(log)
    again = DelayedSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.01, workers=M, schedule="replay",
                       landing_order=order)
    seen = []
    for _ in range(steps):
        again.param_groups[0]["params"][0].grad = torch.ones(2)
        again.step()
        seen.append(again.last_staleness)
    assert seen == [int(r.split(",")[4]) for r in rows]


@pytest.mark.parametrize("kwargs, word", [
    (dict(schedule="gaussian", spread=0.0), "spread"),
    (dict(schedule="random", spread=1.0), "spread"),
    (dict(schedule="compute_time", compute_time={"law": "cauchy"}), "law"),
    (dict(schedule="replay"), "landing_order"),
    (dict(velocity="eta"), "velocity"),
    (dict(velocity="step", velocity_start="gradient"), "velocity_start"),
])
def test_bad_schedule_and_velocity_arguments_name_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        DelayedSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, workers=3, **kwargs)
