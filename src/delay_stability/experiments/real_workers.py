"""Real asynchronous workers: their measured staleness and the step it allows (beyond the paper).

From the minima-stability experiment's kicked minimum (``results/<scale>/stability/kick/``: the
minimum w* plus a kick of norm ε along the top Hessian eigenvector, and a = λmax(H) at w*), each
setting (M workers, jitter) is one launch (``parameter-server-launch``: torchrun's agent on loopback) of ``delay_stability.server`` with M + 1
processes and these phases, each from the kicked minimum:

1. ``pilot``: ``pilot.updates`` updates at η = pilot.factor · α*(τ = M − 1)/a (eq. 6: stable for
   round robin, the slowest of the two laws below), to measure the staleness p̂ of this setting.
2. ``x<f>-r<i>``: for every factor f in ``factors`` and repeat i < ``repeats``: η = f · η*, where
   η* = α*(p̂)/a is the edge predicted from the pilot's measured staleness (eq. 19). A
   continuation *left* when its loss exceeds L_min + G²(L_kick − L_min) (the kick grew G-fold in
   amplitude, G = ``escape.growth``, as in the stability experiment) or is not finite; it *stayed*
   when it settles (loss below L_min + (L_kick − L_min)/settle² for ``escape.window`` evaluations in
   a row) or reaches ``updates``.

The prediction: factors < 1 stay, factors > 1 leave. Tables (``real-workers-collect``):
``outcomes.csv`` (one row per continuation: workers, jitter, factor, repeat, outcome,
mean_staleness, predicted_lr, lr; ``continuations.csv`` adds α = a·η and the edges of the
continuation's own staleness), ``histograms.csv`` (per setting and k: the pilot's p̂_k, the
geometric law (1/M)(1 − 1/M)^k and round robin) and ``settings.csv`` (per setting: mean staleness,
total-variation distances to both laws, the three edges α* and the edge of the logged sequence itself,
``staleness.sequence_edge``: the scalar recurrence along the top eigenvector driven by the pilot's
delays in their order).
"""

from __future__ import annotations

from pathlib import Path

from .. import theory
from ..files import parse_json_object, read_json
from ..files import write_json as write_json_atomic

PILOT = "pilot"


# ----------------------------------------------------------------------------- the grid
def settings(block: dict) -> list[tuple[int, float]]:
    """(M, jitter) of every launch."""
    return [(int(m), float(j)) for m in block["workers"] for j in block["jitters"]]


def setting_dir(base, workers: int, jitter: float) -> Path:
    """``<base>/M<M>/jitter<j>``: the run folder of one launch."""
    return Path(base) / f"M{workers}" / f"jitter{jitter:g}"


def phase_name(factor: float, repeat: int) -> str:
    return f"x{factor:g}-r{repeat}"


def run_config(block: dict, kick: dict, workers: int, jitter: float, device: str = "cpu") -> dict:
    """The server's run configuration of one setting (``delay_stability.server.check_config``)."""
    a = float(kick["sharpness"])
    stop = stop_rule(kick, block["escape"])
    pilot_lr = block["pilot"]["factor"] * theory.critical_alpha(workers - 1) / a
    phases = [{"name": PILOT, "lr": pilot_lr, "updates": int(block["pilot"]["updates"])}]
    phases += [{"name": phase_name(f, r), "factor": float(f), "updates": int(block["updates"]), "stop": stop}
               for f in block["factors"] for r in range(int(block["repeats"]))]
    return {"init_checkpoint": kick["checkpoint"], "sharpness": a, "variant": block["variant"],
            "momentum": float(block["momentum"]), "jitter": float(jitter), "phases": phases, "edge_from": PILOT,
            "eval_every": int(block["eval_every"]), "checkpoint_every": int(block["checkpoint_every"]),
            "timeout": float(block["timeout"]), "worker_timeout": float(block["worker_timeout"]),
            "time_limit": float(block["time_limit"]), "seed": int(block["seed"]), "device": device}


def stop_rule(kick: dict, escape: dict) -> dict:
    """The server's stop rule of a continuation. With a kick that raised the loss (the quick scale):
    left when L > L_min + G²(L_kick − L_min), settled when L < L_min + (L_kick − L_min)/settle² for
    ``window`` evaluations in a row. Without one (kick.norm 0 at paper scale): left when
    L > factor·L0 + delta, L0 the loss at the start (the stability experiment's ``loss`` rule)."""
    l_min, l_kick = float(kick["loss_minimum"]), float(kick["loss_kicked"])
    if l_kick > l_min:
        return {"above": l_min + escape["growth"] ** 2 * (l_kick - l_min),
                "below": l_min + (l_kick - l_min) / escape["settle"] ** 2, "window": int(escape["window"])}
    return {"above": escape["factor"] * l_kick + escape["delta"]}


def launch_flags(block: dict, workers: int) -> str:
    """``parameter-server-launch``'s flags for one setting on one machine: M + 1 processes, restarts
    on failure (torchrun's agent, listening on loopback only: ``server.launch``)."""
    return f"--nproc {workers + 1} --max-restarts {int(block['max_restarts'])}"


# ----------------------------------------------------------------------------- command line
def _cli_config(args):
    block = parse_json_object(args.options, "--options")
    kick = read_json(args.kick, "kick record")
    cfg = run_config(block, kick, args.workers, args.jitter, args.device)
    write_json_atomic(args.out, cfg)
    print(f"wrote {args.out}: {len(cfg['phases'])} phases, M = {args.workers}, jitter {args.jitter:g} s")
    return 0


def register(subparsers) -> None:
    """Add `real-workers-config` to the `delay-stability` command."""
    p = subparsers.add_parser("real-workers-config", help="the parameter server's run config of one setting",
                              description="Write the run configuration (pilot + continuations) of one setting "
                                          "(M workers, jitter) from the stability experiment's kick record.")
    p.add_argument("--kick", required=True, help="kick.json of the stability experiment")
    p.add_argument("--workers", type=int, required=True, help="M, the number of workers")
    p.add_argument("--jitter", type=float, required=True, help="mean exponential pause per gradient (s)")
    p.add_argument("--options", required=True, help="the real_workers config block as JSON")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where each process computes (auto: a GPU per process where there are GPUs)")
    p.add_argument("--out", required=True, help="run config to write (JSON)")
    p.set_defaults(func=_cli_config)
