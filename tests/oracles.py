"""Independent references the tests compare the library against: dense Hessians, brute-force
stability edges from companion-matrix roots, the paper's scalar recurrences iterated step by step,
and a plain CSV reader. None of them uses the code under test."""

import copy
import csv

import numpy as np
import torch
from torch import nn
from torch.func import functional_call


# ---------------------------------------------------------------- tables
def read_csv(path):
    """A CSV file's rows as dicts of strings (csv.DictReader, nothing else)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def rel(a, b):
    """|a − b| / |b|."""
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- dense Hessians
def reference_copy(model, bn_mode):
    """A deep copy in the mode whose Hessian is measured: dropout off; BatchNorm on batch
    statistics without running statistics ("train") or on running statistics ("eval")."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn_mode == "train":
            m.train()
            m.track_running_stats = False
    return ref


def dense_hessian(model, loss_fn, batches, bn_mode="train", at=None):
    """H of (1/N) Σ_b n_b L_b(w) over the trainable parameters (model.parameters() order), by
    torch.autograd.functional.hessian: no Hessian-vector products, no eigen-solver. ``at``: the
    flat weights to take it at (default: the model's)."""
    ref = reference_copy(model, bn_mode)
    named = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named]) if at is None else at.detach().clone()
    buffers = dict(ref.named_buffers())
    total = sum(len(x) for x, _ in batches)

    def loss_of(w):
        weights, i = {}, 0
        for n, p in named:
            weights[n] = w[i:i + p.numel()].view(p.shape)
            i += p.numel()
        return sum(len(x) / total * loss_fn(functional_call(ref, (weights, buffers), (x,)), y)
                   for x, y in batches)

    return torch.autograd.functional.hessian(loss_of, flat)


def top_dense(h):
    """The largest eigenvalue of a dense symmetric matrix (eigvalsh)."""
    return torch.linalg.eigvalsh(h)[-1].item()


# ---------------------------------------------------------------- brute-force stability edges
def char_poly(variant, tau, alpha, m):
    """Characteristic polynomials (highest power first): eq. 4, eq. 26 (times z), eq. 11."""
    if variant == "plain":
        terms = [(tau + 1, 1.0), (tau, -1.0), (0, alpha)]
    elif variant == "momentum":
        terms = [(tau + 2, 1.0), (tau + 1, -(1 + m)), (tau, m), (1, alpha * (1 - m))]
    else:
        terms = [(tau + 2, 1.0), (tau + 1, -1.0), (1, alpha * (1 - m) - m), (0, m)]
    degree = max(power for power, _ in terms)
    coeffs = np.zeros(degree + 1)
    for power, c in terms:
        coeffs[degree - power] += c
    return coeffs


def spectral_radius(variant, tau, alpha, m):
    """Largest root modulus of the characteristic polynomial (numpy.roots: companion matrix)."""
    return np.abs(np.roots(char_poly(variant, tau, alpha, m))).max()


def brute_force_edge(variant, tau, m):
    """Smallest alpha > 0 with a root on the unit circle: geometric scan, then bisection."""
    lo = 1e-4
    while spectral_radius(variant, tau, lo * 1.02, m) < 1:
        lo *= 1.02
    hi = lo * 1.02
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spectral_radius(variant, tau, mid, m) < 1 else (lo, mid)
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------- the paper's scalar recurrences
def iterate(step, history, steps, seed=0):
    """x_{t+1} = step(x, t) from a random history of length ``history``; returns the trajectory."""
    x = np.zeros(history + steps)
    x[:history] = np.random.default_rng(seed).standard_normal(history)
    for t in range(history - 1, history + steps - 1):
        x[t + 1] = step(x, t)
    return x


def eq3(alpha, tau):  # x_{t+1} = x_t − α x_{t−τ}
    return lambda x, t: x[t] - alpha * x[t - tau]


def eq25(alpha, tau, m):  # x_{t+1} = (1+m) x_t − m x_{t−1} − α(1−m) x_{t−τ}
    return lambda x, t: (1 + m) * x[t] - m * x[t - 1] - alpha * (1 - m) * x[t - tau]


def eq10(alpha, tau, m):  # x_{t+1} = x_t + m (x_{t−τ} − x_{t−τ−1}) − α(1−m) x_{t−τ}
    return lambda x, t: x[t] + m * (x[t - tau] - x[t - tau - 1]) - alpha * (1 - m) * x[t - tau]


def eq18(alpha, probs):  # x_{t+1} = x_t − α Σ_k p_k x_{t−k}
    K = len(probs) - 1
    return lambda x, t: x[t] - alpha * float(np.dot(probs, x[t - K : t + 1][::-1]))


def eq25_stochastic(alpha, probs, m):  # eq. 25 with Σ_k p_k x_{t−k} for x_{t−τ}
    K = len(probs) - 1
    return lambda x, t: ((1 + m) * x[t] - m * x[t - 1]
                         - alpha * (1 - m) * float(np.dot(probs, x[t - K : t + 1][::-1])))


# ---------------------------------------------------------------- asynchrony begets momentum
def expected_geometric_staleness_iterates(H, w0, w_star, alpha, q, m, steps):
    """E w_t of w_{t+1} = w_t + m (w_t − w_{t−1}) − α H (w_{t−τ_t} − w*) with the staleness law of
    M random workers that all start from w_0 (Theorem 2's form, summed term by term): P(τ_t = l) =
    (1−q) q^l for l < t and P(τ_t = t) = q^t (the tail: a worker that has not landed since step 0
    still holds g(w_0)). No momentum recurrence is used: the sum over the whole history is explicit."""
    H = np.atleast_2d(np.asarray(H, float))
    hist = [np.asarray(w0, float)]
    prev = hist[0]
    for t in range(steps):
        stale = sum((1 - q) * q ** l * (H @ (hist[t - l] - w_star)) for l in range(t))
        stale = stale + q ** t * (H @ (hist[0] - w_star))
        nxt = hist[t] + m * (hist[t] - prev) - alpha * stale
        prev = hist[t]
        hist.append(nxt)
    return np.array(hist)


def dense_momentum_rate(H, alpha, q, m):
    """Spectral radius of the 3n × 3n companion matrix of Theorem 6's recurrence in the error
    e_t = E w_t − w*: e_{t+1} = ((1+q+m) I − α(1−q) H) e_t − (q+m+qm) e_{t−1} + qm e_{t−2}."""
    H = np.atleast_2d(np.asarray(H, float))
    n = H.shape[0]
    eye = np.eye(n)
    top = np.hstack([(1 + q + m) * eye - alpha * (1 - q) * H, -(q + m + q * m) * eye, q * m * eye])
    mid = np.hstack([eye, 0 * eye, 0 * eye])
    low = np.hstack([0 * eye, eye, 0 * eye])
    return float(np.abs(np.linalg.eigvals(np.vstack([top, mid, low]))).max())
