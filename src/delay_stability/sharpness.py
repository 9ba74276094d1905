"""Sharpness: the top eigenvalue of the Hessian of the training loss.

The stability theory of delayed SGD (Giladi et al., ICLR 2020, sec. 2.1, eq. 3-4) is stated in
terms of the sharpness

    a = λmax(H),      H = (1/N) Σ_{i=1..N} ∇² f_i(x*),

the largest *algebraic* eigenvalue of the Hessian of the training loss averaged over all N training
samples, at the minimum x*. The paper estimates it by power iteration; here it is computed from
Hessian-vector products (HVPs) by Lanczos with full reorthogonalisation (default) or by power
iteration, both with a stated, checkable stopping rule.

The file reads top to bottom:

1. the eigen-solvers, which see the Hessian only as a linear operator ``v -> Hv`` on flat vectors
   (``lanczos_top``, ``power_top``; they know nothing of models and are tested on dense matrices);
2. the model side: the BatchNorm convention, and the HVP of the mean loss over all batches by
   double backward or by forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``);
3. ``top_eigenvalue``, which joins the two;
4. ``result_record``, the JSON record of a result.

It knows no run folder or saved model: ``measure.py`` rebuilds a saved run (``train.load_run``) and
runs the ``delay-stability sharpness`` command on it.

BatchNorm convention (``bn_mode``)
----------------------------------
``"train"`` (default): BatchNorm layers normalise with the statistics of each batch given, i.e. of
batches of the training batch size, exactly as in the SGD steps whose stability the theory
describes; their running statistics are neither used nor updated. ``"eval"``: BatchNorm layers use
the stored running statistics (the function the model computes at inference). Every other module
is in eval mode (dropout off), so the loss, and hence H, is deterministic. The model's modes, its
buffers and its parameters' ``.grad`` are the same after the call as before.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import UserError

METHODS = ("lanczos", "power")
STOP_RULES = ("residual", "change")
BN_MODES = ("train", "eval")
BACKENDS = ("auto", "autograd", "func")


# ------------------------------------------------------------------------------------------------
# 1. Eigen-solvers on a linear operator v -> Hv (H symmetric, n x n)
# ------------------------------------------------------------------------------------------------


@dataclass
class EigenResult:
    """The top (largest algebraic) eigenpair found by a solver.

    ``residual`` is ‖H y − θ y‖ for the returned unit vector y and value θ. For symmetric H some
    eigenvalue lies within ``residual`` of θ (Kahan/Weyl bound), which is what the default stopping
    rule certifies. ``history`` holds θ after every matrix-vector product. ``shift`` is σ when
    power iteration had to run on H − σ I (its first phase found a negative eigenvalue σ), else 0.
    """

    eigenvalue: float
    eigenvector: torch.Tensor
    hvps: int
    converged: bool
    residual: float
    method: str = "lanczos"
    stop: str = "residual"
    tol: float = 1e-4
    history: list = field(default_factory=list)
    shift: float = 0.0


def _check_solver_args(n, tol, max_iter, stop):
    if n < 1:
        raise UserError(f"the operator has dimension n={n}; it needs at least one parameter")
    if not (tol > 0 and math.isfinite(tol)):
        raise UserError(f"tol must be a positive number, got {tol!r}")
    if int(max_iter) < 1:
        raise UserError(f"max_iter must be at least 1, got {max_iter!r}")
    if stop not in STOP_RULES:
        raise UserError(f"stop must be one of {', '.join(STOP_RULES)}; got {stop!r}")


def _start_vector(n, init, generator, device, dtype):
    """A unit start vector: ``init`` (warm start) if given, else N(0, I) drawn from ``generator``.

    The random draw is made on the CPU (seed 0 unless a generator is given) so that the start, and
    hence the result, is the same on every device; it is copied to the device once.
    """
    if init is not None:
        q = torch.as_tensor(init).detach().reshape(-1).to(device=device, dtype=dtype).clone()
        if q.numel() != n:
            raise UserError(f"init has {q.numel()} entries; the operator has dimension {n}")
        norm = torch.linalg.vector_norm(q)
        if not torch.isfinite(norm) or norm.item() == 0.0:
            raise UserError("init must be a finite, non-zero vector")
        return q / norm
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    gen_device = generator.device
    q = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float64)
    q = q.to(device=device, dtype=dtype)
    return q / torch.linalg.vector_norm(q)


def _is_converged(stop, theta, previous, residual, tol):
    """The two stopping rules, both relative to |θ|.

    residual:  ‖H y − θ y‖ ≤ tol·|θ|   (certifies an eigenvalue within tol·|θ| of θ)
    change:    |θ_k − θ_{k−1}| ≤ tol·|θ_k|   (the heuristic of the paper and PyHessian)
    """
    scale = abs(theta)
    if stop == "residual":
        return residual <= tol * scale
    return previous is not None and abs(theta - previous) <= tol * scale


def lanczos_top(matvec, n, *, tol=1e-4, max_iter=100, init=None, generator=None, stop="residual",
                device=None, dtype=torch.float32) -> EigenResult:
    """Largest algebraic eigenvalue of a symmetric operator by Lanczos with full reorthogonalisation.

    Lanczos builds an orthonormal basis Q_k = [q_1 … q_k] of the Krylov space
    span{q_1, H q_1, …, H^{k−1} q_1} and the tridiagonal T_k = Q_kᵀ H Q_k with

        β_j q_{j+1} = H q_j − α_j q_j − β_{j−1} q_{j−1},   α_j = q_jᵀ H q_j,

    (Golub & Van Loan, Matrix Computations, 4th ed., Alg. 10.1.1); each new vector is
    re-orthogonalised against all previous ones (classical Gram-Schmidt, twice), so T_k stays exact
    to rounding. The top Ritz pair (θ, y = Q_k s) of T_k has residual ‖H y − θ y‖ = β_k |s_k|
    (ibid. eq. 10.1.9), available without another product. θ ≤ λmax always and θ → λmax; negative
    eigenvalues of larger magnitude do not attract it. Stops by ``stop`` (see ``_is_converged``),
    on an invariant subspace (β_k ≈ 0: exact), or after min(max_iter, n) products.
    """
    _check_solver_args(n, tol, max_iter, stop)
    q = _start_vector(n, init, generator, device, dtype)
    dtype, device = q.dtype, q.device
    basis = torch.empty((min(16, n), n), device=device, dtype=dtype)
    alphas, betas, history = [], [], []
    q_prev, beta_prev = None, torch.zeros((), device=device, dtype=dtype)
    theta, s, residual, converged = float("nan"), None, float("inf"), False
    steps = min(int(max_iter), n)
    for k in range(steps):
        basis = _grow(basis, k + 1, steps)
        basis[k] = q
        w = matvec(q).reshape(-1).to(dtype)
        alpha = torch.dot(q, w)
        w = w - alpha * q
        if q_prev is not None:
            w = w - beta_prev * q_prev
        for _ in range(2):  # full reorthogonalisation, twice is enough (Giraud et al. 2005)
            w = w - basis[: k + 1].T @ (basis[: k + 1] @ w)
        beta = torch.linalg.vector_norm(w)
        alpha_f, beta_f = torch.stack([alpha, beta]).double().tolist()  # the one host sync
        alphas.append(alpha_f)
        betas.append(beta_f)
        previous = theta if k > 0 else None
        theta, s = _top_ritz_pair(alphas, betas[:-1])
        history.append(theta)
        residual = beta_f * abs(s[-1])
        scale = max(max(abs(a) for a in alphas), max(betas), np.finfo(np.float64).tiny)
        breakdown = beta_f <= 100 * torch.finfo(dtype).eps * scale
        converged = breakdown or _is_converged(stop, theta, previous, residual, tol)
        if converged or k == steps - 1:
            break
        q_prev, beta_prev, q = q, beta, w / beta
    if not converged and len(alphas) == n:
        converged = True  # the Krylov space is the whole space: T is H in another basis
    coeffs = torch.as_tensor(s, device=device, dtype=dtype)
    y = coeffs @ basis[: len(alphas)]
    y = y / torch.linalg.vector_norm(y)
    return EigenResult(theta, y, len(alphas), bool(converged), float(residual), "lanczos", stop,
                       tol, history)


def _grow(buffer, rows, most):
    """The Lanczos basis buffer with room for ``rows`` vectors: doubled when full (O(log k)
    copies), never beyond ``most`` rows."""
    if rows <= buffer.shape[0]:
        return buffer
    bigger = torch.empty((min(2 * buffer.shape[0], most), buffer.shape[1]), device=buffer.device,
                         dtype=buffer.dtype)
    bigger[: buffer.shape[0]] = buffer
    return bigger


def _top_ritz_pair(alphas, offdiag):
    """Largest eigenvalue of the tridiagonal T (diagonal ``alphas``, off-diagonal ``offdiag``) and
    its unit eigenvector, in float64 on the host (T is at most max_iter × max_iter)."""
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if offdiag:
        e = np.asarray(offdiag, dtype=np.float64)
        t += np.diag(e, 1) + np.diag(e, -1)
    values, vectors = np.linalg.eigh(t)
    return float(values[-1]), vectors[:, -1]


def power_top(matvec, n, *, tol=1e-4, max_iter=100, init=None, generator=None, stop="residual",
              device=None, dtype=torch.float32) -> EigenResult:
    """Largest algebraic eigenvalue of a symmetric operator by (shifted) power iteration.

    Power iteration v_{k+1} = H v_k / ‖H v_k‖ with Rayleigh quotient θ_k = v_kᵀ H v_k converges to
    the eigenvalue of largest *magnitude*, at rate |λ_2/λ_1| per product (Golub & Van Loan,
    sec. 7.3.1). If that eigenvalue is negative (θ < 0), the iteration is repeated on the shifted
    operator H − θ I, whose spectrum is ≥ 0 up to the accuracy of θ and whose dominant eigenvalue
    is λmax − θ; the result is then λmax, the largest algebraic eigenvalue, as the theory needs.
    The products of both phases are counted. Stops by ``stop`` (see ``_is_converged``), applied to
    the unshifted θ and residual (the residual ‖H v − θ v‖ does not depend on the shift).
    """
    _check_solver_args(n, tol, max_iter, stop)
    first = _power_phase(matvec, n, 0.0, tol, int(max_iter), init, generator, stop, device, dtype)
    if first.eigenvalue >= 0 or first.hvps >= max_iter:
        return first
    if generator is None:
        generator = torch.Generator().manual_seed(1)
    second = _power_phase(matvec, n, first.eigenvalue, tol, int(max_iter) - first.hvps, None,
                          generator, stop, device, dtype)
    second.hvps += first.hvps
    second.history = first.history + second.history
    second.shift = first.eigenvalue
    return second


def _power_phase(matvec, n, shift, tol, max_iter, init, generator, stop, device, dtype):
    """Power iteration on H − shift·I; θ and the residual are reported for H itself."""
    v = _start_vector(n, init, generator, device, dtype)
    dtype = v.dtype
    history, theta, residual, converged = [], float("nan"), float("inf"), False
    for k in range(max_iter):
        hv = matvec(v).reshape(-1).to(dtype)
        rayleigh = torch.dot(v, hv)
        res = torch.linalg.vector_norm(hv - rayleigh * v)
        shifted = hv - shift * v
        norm = torch.linalg.vector_norm(shifted)
        theta_k, residual, norm_f = torch.stack([rayleigh, res, norm]).double().tolist()
        previous = history[-1] if history else None
        theta = theta_k
        history.append(theta)
        converged = _is_converged(stop, theta, previous, residual, tol) or residual == 0.0
        if converged or k == max_iter - 1 or norm_f == 0.0:
            break
        v = shifted / norm
    return EigenResult(theta, v, len(history), bool(converged), float(residual), "power", stop,
                       tol, history)


# ------------------------------------------------------------------------------------------------
# 2. The model side: BatchNorm convention and Hessian-vector products of the mean training loss
# ------------------------------------------------------------------------------------------------


def _is_batchnorm(module):
    """BatchNorm{1,2,3}d, SyncBatchNorm, and InstanceNorm (which may keep running statistics)."""
    return isinstance(module, nn.modules.batchnorm._NormBase)


@contextlib.contextmanager
def hessian_mode(model: nn.Module, bn_mode: str = "train"):
    """Put ``model`` in the mode whose loss Hessian is measured, and restore it afterwards.

    Every module goes to eval mode (dropout off). With bn_mode="train", BatchNorm layers go to
    train mode with ``track_running_stats`` off: they normalise with the statistics of each batch
    and neither read nor update their running statistics. With bn_mode="eval" they use the running
    statistics. On exit every module's ``training`` and every BatchNorm's ``track_running_stats``
    are restored, so buffers and modes are exactly as before.
    """
    if bn_mode not in BN_MODES:
        raise UserError(f"bn_mode must be one of {', '.join(BN_MODES)}; got {bn_mode!r}")
    modes = [(m, m.training) for m in model.modules()]
    tracking = [(m, m.track_running_stats) for m in model.modules() if _is_batchnorm(m)]
    try:
        model.eval()
        if bn_mode == "train":
            for m, _ in tracking:
                m.train()
                m.track_running_stats = False
        yield model
    finally:
        for m, flag in tracking:
            m.track_running_stats = flag
        for m, flag in modes:
            m.training = flag


def trainable_parameters(model: nn.Module):
    """(names, tensors) of the parameters the Hessian is taken over, in model.parameters() order."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise UserError("the model has no trainable parameters (requires_grad is False for all)")
    return [name for name, _ in named], [p for _, p in named]


def _prepare_batches(batches, device):
    """The batches as a list of (inputs, targets) on ``device`` (moved once, then reused)."""
    prepared = []
    for item in batches:
        try:
            inputs, targets = item
        except (TypeError, ValueError):
            raise UserError("batches must be an iterable of (inputs, targets) pairs") from None
        prepared.append((inputs.to(device), targets.to(device)))
    if not prepared:
        raise UserError("batches is empty: the Hessian needs at least one (inputs, targets) batch")
    if any(len(x) == 0 for x, _ in prepared):
        raise UserError("batches contains an empty batch")
    return prepared


def _split_like(flat, shapes):
    """Views of a flat vector shaped like the parameters."""
    sizes = [math.prod(s) for s in shapes]
    return [chunk.view(s) for chunk, s in zip(torch.split(flat, sizes), shapes)]


def _hvp_autograd(model, loss_fn, params, names, x, y, vs):
    """H_b v for one batch by double backward: H v = ∇_w (∇_w L(w) · v) (Pearlmutter 1994)."""
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vs))
    if not dot.requires_grad:  # the loss is at most linear in the parameters: H = 0
        return [torch.zeros_like(p) for p in params]
    return list(torch.autograd.grad(dot, params, materialize_grads=True))


def _hvp_func(model, loss_fn, params, names, x, y, vs):
    """H_b v for one batch by forward-over-reverse: H v = d/dt ∇L(w + t v) at t = 0, i.e.
    ``torch.func.jvp`` of ``torch.func.grad`` (the JAX autodiff cookbook's recommended HVP)."""
    from torch.func import functional_call, grad, jvp

    primals = {n: p.detach() for n, p in zip(names, params)}
    tangents = dict(zip(names, vs))
    constants = {n: t for n, t in model.named_buffers()}
    constants.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})

    def loss_at(weights):
        return loss_fn(functional_call(model, (weights, constants), (x,)), y)

    _, out = jvp(grad(loss_at), (primals,), (tangents,))
    return [out[n] for n in names]


_HVP_BACKENDS = {"autograd": _hvp_autograd, "func": _hvp_func}
_AUTOTUNED: dict = {}


class HessianOperator:
    """The Hessian of the mean training loss as a linear operator on flat vectors.

    With batches B_1 … B_m of sizes n_1 … n_m (N = Σ n_b) and ``loss_fn`` returning the mean loss
    of a batch, the loss is L(w) = Σ_b (n_b / N) L_b(w) = (1/N) Σ_i f_i(w), so

        H v = Σ_b (n_b / N) H_b v,

    accumulated batch by batch on the device. The model must be in ``hessian_mode`` while the
    operator is used (``top_eigenvalue`` and ``hvp`` take care of it).
    """

    def __init__(self, model, loss_fn, batches, backend="auto"):
        if backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.model, self.loss_fn = model, loss_fn
        self.names, self.params = trainable_parameters(model)
        self.shapes = [p.shape for p in self.params]
        self.n = sum(p.numel() for p in self.params)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.batches = _prepare_batches(batches, self.device)
        self.n_samples = sum(len(x) for x, _ in self.batches)
        self.backend, self.auto = backend, backend == "auto"
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.numel() != self.n:
            raise UserError(f"v has {v.numel()} entries; the model has {self.n} trainable parameters")
        if self.backend == "auto":
            self.backend = _choose_backend(self)
        vs = _split_like(v.reshape(-1).to(device=self.device, dtype=self.dtype), self.shapes)
        out = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        for x, y in self.batches:
            hv = self._batch_hvp(x, y, vs)
            out.add_(torch.cat([h.reshape(-1) for h in hv]), alpha=len(x) / self.n_samples)
        self.calls += 1
        return out

    def _batch_hvp(self, x, y, vs):
        try:
            return _HVP_BACKENDS[self.backend](self.model, self.loss_fn, self.params, self.names,
                                               x, y, vs)
        except (RuntimeError, NotImplementedError):
            if self.backend != "func" or not self.auto:
                raise
            self.backend = "autograd"  # an op without a forward-mode rule: fall back, once
            return self._batch_hvp(x, y, vs)


def _choose_backend(op: HessianOperator) -> str:
    """The HVP backend for backend="auto".

    On the CPU double backward is used: it measured faster than forward-over-reverse for every
    model in benchmarks/sharpness.py. On an accelerator both are timed once on the first batch
    (two calls each, the second timed) and the faster is kept for this model class, device and
    batch shape (and parameter count); if ``torch.func`` cannot run the model, double backward
    is used.
    """
    if op.device.type == "cpu":
        return "autograd"
    x, y = op.batches[0]
    key = (type(op.model).__name__, op.n, str(op.device), tuple(x.shape), op.dtype)
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = _time_backends(op, x, y)
    return _AUTOTUNED[key]


def _time_backends(op, x, y):
    vs = _split_like(torch.ones(op.n, device=op.device, dtype=op.dtype), op.shapes)
    seconds = {}
    for name in ("func", "autograd"):
        try:
            for _ in range(2):
                _synchronize(op.device)
                start = time.perf_counter()
                _HVP_BACKENDS[name](op.model, op.loss_fn, op.params, op.names, x, y, vs)
                _synchronize(op.device)
                seconds[name] = time.perf_counter() - start
        except (RuntimeError, NotImplementedError):
            continue
    return min(seconds, key=seconds.get) if seconds else "autograd"


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hvp(model, loss_fn, batches, v, *, bn_mode="train", backend="auto") -> torch.Tensor:
    """H v, H the Hessian of the mean loss over all samples in ``batches`` (see HessianOperator),
    as a flat tensor over the trainable parameters in model.parameters() order."""
    with hessian_mode(model, bn_mode):
        return HessianOperator(model, loss_fn, batches, backend)(v)


# ------------------------------------------------------------------------------------------------
# 3. The top eigenvalue of a model's training-loss Hessian
# ------------------------------------------------------------------------------------------------


@dataclass
class SharpnessResult(EigenResult):
    """EigenResult plus where it came from: backend, BatchNorm mode, data size and time."""

    backend: str = "autograd"
    bn_mode: str = "train"
    n_samples: int = 0
    n_batches: int = 0
    seconds: float = 0.0


def top_eigenvalue(model, loss_fn, batches, *, tol=1e-4, max_iter=100, method="lanczos",
                   init=None, bn_mode="train", generator=None, stop="residual",
                   backend="auto") -> SharpnessResult:
    """Sharpness a = λmax(H) of the mean training loss over ``batches`` (paper eq. 3).

    H = (1/N) Σ_i ∇² f_i(w) at the model's current weights, N the number of samples in all
    batches (batches weighted by size), ``loss_fn(outputs, targets)`` the mean loss of a batch.
    ``method``: "lanczos" (full reorthogonalisation) or "power" (shifted so that the result is the
    largest algebraic eigenvalue). ``stop``: "residual" (default; stops when ‖Hy − θy‖ ≤ tol·|θ|,
    which certifies an eigenvalue within tol·|θ|) or "change" (|θ_k − θ_{k−1}| ≤ tol·|θ_k|).
    ``init``: a previous eigenvector for a warm start. ``bn_mode``: see the module docstring.
    ``backend``: "autograd" (double backward), "func" (forward-over-reverse) or "auto".
    The eigenvector is a flat tensor over the trainable parameters, in model.parameters() order.
    """
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    solver = lanczos_top if method == "lanczos" else power_top
    start = time.perf_counter()
    with hessian_mode(model, bn_mode):
        op = HessianOperator(model, loss_fn, batches, backend)
        found = solver(op, op.n, tol=tol, max_iter=max_iter, init=init, generator=generator,
                       stop=stop, device=op.device, dtype=op.dtype)
    _synchronize(op.device)
    return SharpnessResult(**vars(found), backend=op.backend, bn_mode=bn_mode,
                           n_samples=op.n_samples, n_batches=len(op.batches),
                           seconds=time.perf_counter() - start)


def result_record(result: SharpnessResult, **extra) -> dict:
    """The JSON record of a result (the eigenvector is not included)."""
    record = {
        "eigenvalue": result.eigenvalue,
        "hvps": result.hvps,
        "converged": result.converged,
        "residual": result.residual,
        "tol": result.tol,
        "method": result.method,
        "stop": result.stop,
        "backend": result.backend,
        "bn_mode": result.bn_mode,
        "n_samples": result.n_samples,
        "n_batches": result.n_batches,
        "seconds": result.seconds,
        "shift": result.shift,
        "history": result.history,
    }
    record.update(extra)
    return record
