"""Measurements at a saved run: ``delay-stability sharpness --checkpoint PATH --out PATH.json``.

The solver (``sharpness.top_eigenvalue``) sees a model, a loss and batches only; this module
rebuilds them from a checkpoint with the engine's one loader (``train.load_run``): the run's own
network, training data and loss, in the run's dtype.
"""

from __future__ import annotations

import os

import torch

from . import train
from .errors import UserError
from .files import write_json
from .sharpness import BACKENDS, BN_MODES, METHODS, STOP_RULES, result_record, top_eigenvalue


def sharpness_of_checkpoint(path, *, device="cpu", subset=0, seed=0, batch_size=None, tol=1e-4,
                            max_iter=100, method="lanczos", stop="residual", bn_mode="train",
                            backend="auto"):
    """a = λmax(H) of the mean training loss at a checkpoint, on the run's own training data and
    loss, in batches of the run's training batch size (``batch_size``: another size; 0 = full batch).

    Returns (SharpnessResult, facts) with facts = {batch_size, dtype, subset, seed, device}.
    """
    run = train.load_run(path, torch.device(device))
    if batch_size is None:
        batch_size = int(run.spec.get("batch_size", 0) or 0)
    batches = run.batches(batch_size, subset=subset, seed=seed)
    result = top_eigenvalue(run.model, run.loss_fn, batches, tol=tol, max_iter=max_iter, method=method,
                            bn_mode=bn_mode, stop=stop, backend=backend,
                            generator=torch.Generator().manual_seed(seed))
    dtype = str(next(run.model.parameters()).dtype).replace("torch.", "")
    return result, {"batch_size": batch_size, "dtype": dtype, "subset": subset, "seed": seed,
                    "device": str(run.device)}


# ------------------------------------------------------------------------------------------------
# Command line: delay-stability sharpness --checkpoint PATH --out PATH.json
# ------------------------------------------------------------------------------------------------


def register(subparsers):
    """Add ``delay-stability sharpness``."""
    p = subparsers.add_parser(
        "sharpness",
        help="top Hessian eigenvalue of the training loss at a checkpoint",
        description="Largest eigenvalue of the Hessian of the mean training loss at a checkpoint "
                    "written by `delay-stability train`; the model and the training data are "
                    "rebuilt from the run's own spec stored in the checkpoint.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) of a training run")
    p.add_argument("--out", required=True, help="result JSON (written atomically)")
    p.add_argument("--subset", type=int, default=0,
                   help="use N training samples drawn without replacement (seeded by --seed); "
                        "0 = all (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the start vector")
    p.add_argument("--batch-size", type=int, default=None,
                   help="HVP batch size (default: the run's training batch size; 0 = full batch)")
    p.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    p.add_argument("--max-iter", type=int, default=100, help="most Hessian-vector products")
    p.add_argument("--method", choices=METHODS, default="lanczos")
    p.add_argument("--stop", choices=STOP_RULES, default="residual")
    p.add_argument("--bn-mode", choices=BN_MODES, default="train")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.set_defaults(func=_cli_sharpness)


def _cli_sharpness(args) -> int:
    if not os.path.isfile(args.checkpoint):
        raise UserError(f"--checkpoint: no such file: {args.checkpoint}")
    if args.subset < 0:
        raise UserError(f"--subset must be >= 0, got {args.subset}")
    if args.batch_size is not None and args.batch_size < 0:
        raise UserError(f"--batch-size must be >= 0, got {args.batch_size}")
    if not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}")
    device = train.resolve_device(args.device)
    result, facts = sharpness_of_checkpoint(
        args.checkpoint, device=device, subset=args.subset, seed=args.seed,
        batch_size=args.batch_size, tol=args.tol, max_iter=args.max_iter, method=args.method,
        stop=args.stop, bn_mode=args.bn_mode, backend=args.backend)
    write_json(args.out, result_record(result, checkpoint=args.checkpoint, **facts))
    print(f"sharpness {result.eigenvalue:.6g} ({result.hvps} HVPs, "
          f"{'converged' if result.converged else 'NOT converged'}) -> {args.out}")
    return 0
