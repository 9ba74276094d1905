# Paths, grids and specs of the delayed edge-of-stability experiment (rules: eos.smk).

EOS = EXP.get("eos")
EOS_DIR = SCALE_DIR / "eos"
EOS_LOGS = LOGS / "eos"
#: `python -m delay_stability.eos` runs the same commands as `delay-stability eos-run / eos-collect`;
#: training runs go through the GPU-slot wrapper like every training rule (see DS_GPU in common.smk).
EOS_CLI = f"{shlex.quote(sys.executable)} -m delay_stability.eos"
EOS_CLI_GPU = f"{shlex.quote(sys.executable)} {shlex.quote(str(GPU_SLOT))} --gpus {gpus_per_job()} -- {EOS_CLI}"
EOS_CODE = src_hash("asgd", "models", "data", "train", "sharpness", "theory", "eos")
EOS_RUN_FILES = ("sharpness.csv", "summary.json", "run.json", "final.pt")


def eos_fixed_runs():
    """(lr, tau) of every fixed-η run."""
    block = EOS.get("fixed") if EOS else None
    return [(float(lr), int(tau)) for lr in block["lrs"] for tau in block["taus"]] if block else []


def eos_scaled_runs():
    """(variant, momentum, tau) of every run with η = α*(τ, m)/edge."""
    block = EOS.get("scaled") if EOS else None
    if not block:
        return []
    return [(r["variant"], float(r["momentum"]), int(tau)) for r in block["runs"] for tau in r["taus"]]


def eos_fixed_dir(lr, tau):
    return EOS_DIR / "fixed" / f"lr{lr:g}" / f"tau{tau}"


def eos_scaled_dir(variant, m, tau):
    return EOS_DIR / "scaled" / f"{variant}-m{m:g}" / f"tau{tau}"


def eos_tracks(wildcards=None):
    """sharpness.csv of every run the figure reads."""
    dirs = [eos_fixed_dir(*r) for r in eos_fixed_runs()] + [eos_scaled_dir(*r) for r in eos_scaled_runs()]
    return [str(d / "sharpness.csv") for d in dirs]


def eos_outputs(folder):
    """The files a tracked run leaves in `folder` (final.pt too, so that a rerun starts afresh)."""
    return {name.split(".")[0]: str(folder / name) for name in EOS_RUN_FILES}


def eos_track_flags():
    t = EOS["track"]
    flags = [f"--track-every {t['every']}", f"--tol {t.get('tol', 1e-3)}", f"--max-iter {t.get('max_iter', 100)}",
             f"--method {t.get('method', 'lanczos')}"]
    if "hvp_batch" in t:
        flags.append(f"--hvp-batch {t['hvp_batch']}")
    return " ".join(flags)


def eos_base_spec(**override):
    """The config's eos.train spec with per-run keys merged in and the run-wide settings added."""
    return with_run_settings(deep_merge(EOS["train"], override))


def eos_fixed_spec(lr, tau):
    return eos_base_spec(lr=lr, epochs=EOS["fixed"]["epochs"], optimizer={"delay": tau})


def eos_burn_in_spec():
    burn = EOS["scaled"]["burn_in"]
    return eos_base_spec(lr=burn["lr"], epochs=burn["epochs"], optimizer={"delay": 0})


def eos_scaled_spec(variant, m, tau):
    """A scaled run: no lr (eos-run sets η = α*(τ, m)/edge), more epochs for larger τ (η falls as α*)."""
    block = EOS["scaled"]
    spec = eos_base_spec(
        epochs=block["epochs"] + block.get("epochs_per_tau", 0) * tau,
        optimizer={"delay": tau, "variant": variant, "momentum": m},
        init_checkpoint=str(EOS_DIR / "burn_in" / "final.pt"),
        perturb=block.get("perturb", 0.0),
    )
    spec.pop("lr", None)
    return spec


def eos_plot_options():
    opts = {"edge_tol": EOS.get("edge_tol", 0.05)}
    burn = EOS.get("scaled", {}).get("burn_in")
    if burn:
        opts["burn_in"] = f"{burn['epochs']} steps of GD at η = {burn['lr']:g}"
    return json.dumps(opts)
