"""Run the real Snakemake workflow in a throw-away copy of the repository's workflow files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def copy_workflow(dest):
    dest.mkdir(parents=True, exist_ok=True)
    """Copy Snakefile, config.yaml, environment.yml (the rules' `conda:` file), workflow/ and the
    default profile (profiles/)."""
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy(REPO / "config.yaml", dest / "config.yaml")
    shutil.copy(REPO / "environment.yml", dest / "environment.yml")
    shutil.copytree(REPO / "workflow", dest / "workflow")
    shutil.copytree(REPO / "profiles", dest / "profiles")
    return dest


def tiny_stability(config, taus=(0, 2)):
    """A minima-stability experiment that runs in seconds: 48 digits, MLP 64-24-10, short budgets."""
    block = config["quick"]["stability"]
    block["baseline"].update(model_args={"hidden": [24], "activation": "tanh"},
                             dataset_args={"train_size": 48}, epochs=300, eval_every=100,
                             checkpoint_every=100)
    block["taus"] = list(taus)
    block["variants"] = {"plain": {"variant": "plain", "momenta": [0.0]},
                         "shifted": {"variant": "shifted", "momenta": [0.5]}}
    block["search"].update(alpha_max=4096.0, rel_tol=0.08, base_epochs=300, epochs_per_tau=300,
                           max_epochs=1000)
    block["continuation"] = {"eval_every": 20}
    block["curves"] = {"taus": [2], "lr_factors": [0.8, 1.5], "epochs": 300}


def tiny_eos(config):
    """A delayed edge-of-stability experiment of a few seconds: 64 digits, two delays."""
    block = config["quick"]["eos"]
    block["train"].update(model_args={"hidden": [16], "activation": "tanh"}, dataset_args={"train_size": 64},
                          eval_every=50)
    block["track"].update(every=20, max_iter=30)
    block["fixed"] = {"lrs": [0.1], "taus": [0, 1], "epochs": 200}
    block["scaled"].update(burn_in={"lr": 0.05, "epochs": 100}, epochs=100, epochs_per_tau=50,
                           runs=[{"variant": "plain", "momentum": 0.0, "taus": [1]}])


def tiny_theory(config):
    for fig in ("fig6", "fig10", "fig4a"):
        config["theory"][fig]["tau_max"] = 8
    config["theory"]["fig7"]["b_max"] = 8
    config["theory"]["fig8"]["mu_max"] = 4


def snakemake(workdir, *args, timeout=900, env=None, python=None):
    """Run snakemake in ``workdir`` (``python``: run it as ``python -m snakemake`` with that
    interpreter; ``env``: extra environment variables)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    environ["PATH"] = f"{SNAKEMAKE.parent}{os.pathsep}{environ.get('PATH', '')}"
    environ.update(env or {})
    command = [str(python), "-m", "snakemake"] if python else [str(SNAKEMAKE)]
    return subprocess.run([*command, *args], cwd=workdir, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def edit_config(workdir, edit):
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
