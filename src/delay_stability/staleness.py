"""Staleness logs of real asynchronous workers and their measured delay distribution (no torch).

``staleness.csv`` (written by ``delay_stability.server``) has one row per applied update: its index
t, the worker, the worker's step, the version it pulled and its staleness τ_t = t − pulled. Its
histogram p̂_k = #{τ_t = k}/T is a delay distribution P(τ = k) whose stability edge is eq. 19
(``theory.critical_alpha(p̂)``); ``delay-stability threshold --staleness FILE`` reads it here.

The two laws to compare with, for M homogeneous workers (each with one gradient in flight):
- the queueing model of *Asynchrony begets Momentum* (memoryless compute times; the next update
  comes from a uniformly random worker): geometric, P(τ = k) = (1/M)(1 − 1/M)^k, mean M − 1;
- round robin (equal, fixed compute times): τ = M − 1 always.
In steady state the *mean* staleness of M homogeneous workers is M − 1 whatever the timing (each
update is preceded, since its pull, by one update of every other worker on average).
"""

from __future__ import annotations

import numpy as np

from .errors import UserError
from .files import read_csv
from .theory import geometric_delay

#: One row per applied update in ``staleness.csv``.
STALENESS_COLUMNS = ("update", "worker", "step", "pulled", "staleness", "time")
#: ``histogram.csv``: the measured delay distribution of a run.
HISTOGRAM_COLUMNS = ("staleness", "count", "probability")


def histogram(staleness) -> np.ndarray:
    """p̂_k = #{τ_t = k}/T for k = 0..max τ: the measured delay distribution."""
    s = np.asarray(list(staleness), dtype=int)
    if s.size == 0 or (s < 0).any():
        raise ValueError("a staleness log needs at least one update and no negative staleness")
    counts = np.bincount(s)
    return counts / counts.sum()


#: What a staleness log given by the user must hold.
STALENESS_FORMAT = ("a staleness log is a CSV file with a header line naming a column staleness and one "
                    "integer >= 0 per update, as the staleness.csv that parameter-server writes")


def read_staleness(path) -> list[int]:
    """The staleness column of a ``staleness.csv``; UserError naming the file and what is wrong."""
    rows = read_csv(path, "staleness log", columns=("staleness",), advice=STALENESS_FORMAT)
    if not rows:
        raise UserError(f"staleness log {path}: no updates (a header and no rows); {STALENESS_FORMAT}")
    values = []
    for line, row in enumerate(rows, start=2):
        try:
            k = int(row["staleness"])
        except (TypeError, ValueError):
            raise UserError(f"staleness log {path}: line {line}: staleness {row['staleness']!r} "
                            "is not an integer") from None
        if k < 0:
            raise UserError(f"staleness log {path}: line {line}: negative staleness {k}")
        values.append(k)
    return values


def landing_order(path) -> list[int]:
    """The landing workers of a ``staleness.csv``, in update order, numbered 0..M-1 (ranks sorted):
    ``DelayedSGD(schedule="replay", landing_order=...)`` replays the real run's schedule (each
    worker reads the weights right after it lands, as at the server, so the staleness sequence is
    the logged one once every worker has landed)."""
    rows = read_csv(path, "staleness log", columns=("worker",))
    if not rows:
        raise UserError(f"staleness log {path}: no updates (no rows)")
    workers = []
    for line, row in enumerate(rows, start=2):
        try:
            workers.append(int(row["worker"]))
        except (TypeError, ValueError):
            raise UserError(f"staleness log {path}: line {line}: worker {row['worker']!r} is not an integer") from None
    index = {rank: i for i, rank in enumerate(sorted(set(workers)))}
    return [index[w] for w in workers]


def geometric_law(workers: int) -> np.ndarray:
    """P(τ = k) = (1/M)(1 − 1/M)^k (the queueing model; truncated at tail 1e-12)."""
    return geometric_delay(1.0 - 1.0 / int(workers))


def round_robin_law(workers: int) -> np.ndarray:
    """P(τ = M − 1) = 1."""
    p = np.zeros(int(workers))
    p[-1] = 1.0
    return p


def total_variation(p, q) -> float:
    """½ Σ_k |p_k − q_k| between two delay distributions (zero-padded to one length)."""
    n = max(len(p), len(q))
    a, b = np.zeros(n), np.zeros(n)
    a[: len(p)], b[: len(q)] = p, q
    return 0.5 * float(np.abs(a - b).sum())


def sequence_growth(alpha: float, staleness) -> float:
    """max_t |x_t| of the scalar recurrence x_{t+1} = x_t − α x_{t−τ_t} driven by the logged staleness
    sequence τ_0..τ_{T−1} (x_t = 1 for t ≤ 0): the linearised dynamics along the top Hessian
    eigenvector (α = a·η) under exactly these delays, in this order (eq. 2 with a real schedule)."""
    taus = [int(k) for k in staleness]
    x = [1.0] * (max(taus) + 1)
    top = 1.0
    for k in taus:
        x.append(x[-1] - alpha * x[-1 - k])
        top = max(top, abs(x[-1]))
        if top > 1e150:
            return float("inf")
    return top


def sequence_edge(staleness, growth: float = 3.0, rel_tol: float = 1e-3) -> float:
    """The smallest α in (0, 2] (bisection, to ``rel_tol``) at which the recurrence driven by the logged
    sequence (``sequence_growth``) grows ``growth``-fold at some step: the escape rule of the
    continuations, applied to the linearised dynamics. Unlike eq. 19, which averages i.i.d. delays
    (the mean dynamics), this keeps the delays' order and spread; a constant delay τ gives eq. 6's
    edge as the log grows."""
    lo, hi = 0.0, 2.0
    if sequence_growth(hi, staleness) < growth:
        return hi
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sequence_growth(mid, staleness) < growth else (lo, mid)
    return 0.5 * (lo + hi)
