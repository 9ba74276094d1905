"""The cluster profiles (workflow/profiles/) and the GPU slot allocator (delay_stability/gpu_slot.py).

- The SLURM and local-gpu profiles are accepted by this Snakemake and SLURM plugin, and a dry run at
  paper scale resolves the training jobs' resources: gpu=1, their runtime and mem_mb, the profile's
  default partition; the plugin turns them into `--gpus=1` (never also `--gres`).
- gpu_slot.py hands out distinct GPUs to concurrent jobs, waits when all are taken, frees a GPU when
  its holder dies (even by SIGKILL), steps aside at gpu=0 and inside a SLURM job holding exactly
  its GPUs, and rejects impossible requests. No GPU is needed: the pool is given explicitly.
- A real local run through the local-gpu profile with a two-"GPU" pool never puts two jobs on one
  GPU at once.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
GPU_SLOT = ["-m", "delay_stability.gpu_slot"]  # the module behind `delay-stability-gpu-slot`
SLURM_PROFILE = ROOT / "workflow" / "profiles" / "slurm"
LOCAL_GPU_PROFILE = ROOT / "workflow" / "profiles" / "local-gpu"
PAPER_TARGET = "figures/fig2.pdf"  # trains on GPUs at paper scale (baseline, continuation grid)


# ---------------------------------------------------------------- the profiles as files


def load_profile(path):
    return yaml.safe_load((path / "config.yaml").read_text())


def test_slurm_profile_settings():
    p = load_profile(SLURM_PROFILE)
    assert p["executor"] == "slurm"
    assert p["jobs"] >= 1 and p["retries"] >= 1 and p["latency-wait"] >= 10
    assert p["slurm-status-command"] == "squeue"  # works without slurmdbd; the plugin falls back to sacct
    defaults = p["default-resources"]
    assert {"slurm_partition", "runtime", "mem_mb"} <= set(defaults)
    # One GPU mechanism: the rules' `gpu` resource; no gres anywhere (the plugin would pass both).
    assert "gres" not in defaults and "gres" not in str(p.get("set-resources", ""))


def test_local_gpu_profile_settings():
    p = load_profile(LOCAL_GPU_PROFILE)
    assert "executor" not in p  # local execution
    assert p["cores"] == "all"
    assert isinstance(p["resources"]["gpu"], int) and p["resources"]["gpu"] >= 1
    assert p["retries"] >= 1


# ---------------------------------------------------------------- dry runs through the profiles

RULE_RE = re.compile(r"^(?:local)?rule (\w+):$")
RES_RE = re.compile(r"^\s+resources: (.*)$")


def dry_run_jobs(profile, scale, target):
    """Run `snakemake -n --profile <profile> <target> --config scale=<scale>` in the repository and
    return [(rule, {resource: value})] for every job it would run. (The target goes before --config,
    which takes every following word as a key=value pair.)"""
    cmd = [str(SNAKEMAKE), "-n", "--profile", str(profile), target, "--config", f"scale={scale}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    if res.returncode != 0 and re.search(rf"No rule to produce {re.escape(target)}|MissingRuleException", out):
        pytest.xfail(f"{target} has no rule yet (the stability rules are still to come)")
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-3000:]}"
    jobs, rule = [], None
    for line in out.splitlines():
        if m := RULE_RE.match(line):
            rule = m.group(1)
        elif (m := RES_RE.match(line)) and rule is not None:
            resources = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
            jobs.append((rule, resources))
            rule = None
    assert jobs, f"no job found in the dry run of {target}:\n{out[-3000:]}"
    return jobs


def gpu_jobs(jobs):
    return [(rule, r) for rule, r in jobs if "gpu" in r]


class StandInJob:
    """Just what the SLURM plugin's sbatch builders read from a job: resources and threads."""

    def __init__(self, resources, threads=1):
        self.resources = SimpleNamespace(**resources)
        self.resources.get = lambda key, default=None: getattr(self.resources, key, default)
        self.threads = threads


def sbatch_flags(resources):
    """The sbatch command line snakemake-executor-plugin-slurm builds for these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    typed = {k: int(v) if v.isdigit() else v for k, v in resources.items()}
    job = StandInJob(typed)
    params = dict(run_uuid="u", slurm_logfile="l", comment_str="c", account="", partition="", workdir="")
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.slow
def test_slurm_dry_run_paper_scale_requests_one_gpu_per_training_job():
    jobs = dry_run_jobs(SLURM_PROFILE, "paper", PAPER_TARGET)
    training = gpu_jobs(jobs)
    assert training, f"no job of {PAPER_TARGET} declares a gpu resource: {sorted({r for r, _ in jobs})}"
    default_runtime = load_profile(SLURM_PROFILE)["default-resources"]["runtime"]
    for rule, res in training:
        assert res["gpu"] == "1", (rule, res)
        assert int(res["runtime"]) >= 1 and int(res["mem_mb"]) >= 1, (rule, res)
        assert "gres" not in res, (rule, res)
        flags = sbatch_flags(res)
        assert " --gpus=1" in flags and "--gres" not in flags, flags
        assert f" -t {res['runtime']}" in flags and f" --mem {res['mem_mb']}" in flags, flags
    # the rules' paper-scale wall times (hours to days), not the profile's default, reach the jobs
    assert max(int(res["runtime"]) for _, res in training) > default_runtime, training
    for rule, res in jobs:  # the profile's default-resources reach every job
        assert "slurm_partition" in res and "runtime" in res and "mem_mb" in res, (rule, res)


@pytest.mark.slow
def test_slurm_dry_run_quick_scale_requests_no_gpu():
    jobs = dry_run_jobs(SLURM_PROFILE, "quick", PAPER_TARGET)
    for rule, res in gpu_jobs(jobs):
        assert res["gpu"] == "0", (rule, res)
        assert "--gpus" not in sbatch_flags(res)


@pytest.mark.slow
def test_local_gpu_dry_run_paper_scale():
    training = gpu_jobs(dry_run_jobs(LOCAL_GPU_PROFILE, "paper", PAPER_TARGET))
    assert training and all(res["gpu"] == "1" for _, res in training), training


# ---------------------------------------------------------------- gpu_slot.py


def slot_cmd(*args, pool="0,1", lock_dir, gpus=1):
    return [sys.executable, *GPU_SLOT, "--gpus", str(gpus), "--pool", pool, "--lock-dir", str(lock_dir),
            "--poll", "0.05", "--", *args]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(extra)
    return env


HOLD = textwrap.dedent("""
    import os, pathlib, sys, time
    d = pathlib.Path(sys.argv[1])
    (d / (sys.argv[2] + ".tmp")).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    os.replace(d / (sys.argv[2] + ".tmp"), d / sys.argv[2])      # "I run, on this device"
    while not (d / (sys.argv[2] + ".release")).exists():
        time.sleep(0.02)
""")


def wait_for(path, proc=None, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {path.name} appeared")
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)
    return path.read_text()


def holder(tmp_path, name, lock_dir, **kw):
    cmd = slot_cmd(sys.executable, "-c", HOLD, str(tmp_path), name, lock_dir=lock_dir, **kw)
    return subprocess.Popen(cmd, env=clean_env(), stderr=subprocess.PIPE, text=True)


def test_gpu_slot_concurrent_jobs_get_distinct_gpus_and_wait_for_a_free_one(tmp_path):
    locks = tmp_path / "locks"
    a = holder(tmp_path, "a", locks)
    dev_a = wait_for(tmp_path / "a", a)
    b = holder(tmp_path, "b", locks)
    dev_b = wait_for(tmp_path / "b", b)
    assert {dev_a, dev_b} == {"0", "1"}
    c = holder(tmp_path, "c", locks)  # both GPUs taken: c must wait
    try:
        assert "waiting for 1 free GPU" in c.stderr.readline()
        assert not (tmp_path / "c").exists() and c.poll() is None
        (tmp_path / "a.release").touch()  # a ends and frees its GPU
        assert a.wait(timeout=60) == 0
        assert wait_for(tmp_path / "c", c) == dev_a
    finally:
        for name in ("b", "c"):
            (tmp_path / f"{name}.release").touch()
        assert b.wait(timeout=60) == 0 and c.wait(timeout=60) == 0


def test_gpu_slot_gpu_is_freed_when_its_holder_is_killed(tmp_path):
    locks = tmp_path / "locks"
    a = holder(tmp_path, "a", locks, pool="7")
    assert wait_for(tmp_path / "a", a) == "7"
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=60)
    b = holder(tmp_path, "b", locks, pool="7")
    try:
        assert wait_for(tmp_path / "b", b) == "7"
    finally:
        (tmp_path / "b.release").touch()
        assert b.wait(timeout=60) == 0


def test_gpu_slot_claims_several_gpus_for_one_job(tmp_path):
    out = subprocess.run(
        slot_cmd(sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])",
                 pool="3,5,6", gpus=2, lock_dir=tmp_path),
        env=clean_env(), capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "3,5"


def print_env_cmd(**kw):
    return slot_cmd(sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>'))", **kw)


def test_gpu_slot_steps_aside_at_zero_gpus(tmp_path):
    out = subprocess.run(print_env_cmd(gpus=0, lock_dir=tmp_path / "l"), env=clean_env(),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "<unset>" and not (tmp_path / "l").exists()


def test_gpu_slot_under_slurm(tmp_path):
    # A SLURM job holding exactly the GPUs it asks for: SLURM bound them, nothing to do.
    env = clean_env(SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="0")
    out = subprocess.run([sys.executable, *GPU_SLOT, "--gpus", "1", "--lock-dir", str(tmp_path), "--",
                          sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0" and not list(tmp_path.iterdir())
    # A bigger allocation shared out by local jobs: locks live per SLURM job.
    out = subprocess.run(print_env_cmd(pool="0,1,2,3", lock_dir=tmp_path), env=clean_env(SLURM_JOB_ID="42"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0" and (tmp_path / "slurm-job-42" / "gpu-0.lock").exists()


def test_gpu_slot_usage_errors(tmp_path):
    res = subprocess.run(print_env_cmd(pool="0,1", gpus=3, lock_dir=tmp_path), env=clean_env(),
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--gpus 3 but only 2 GPU(s)" in res.stderr
    res = subprocess.run([sys.executable, *GPU_SLOT, "--gpus", "1"], capture_output=True, text=True)
    assert res.returncode == 2 and "no command given" in res.stderr
    res = subprocess.run(slot_cmd("no-such-program-xyz", lock_dir=tmp_path), env=clean_env(),
                         capture_output=True, text=True)
    assert res.returncode == 127 and "cannot run 'no-such-program-xyz'" in res.stderr


# ---------------------------------------------------------------- the local-gpu profile, for real

TOY_SNAKEFILE = """
GPU_SLOT = "{python} -m delay_stability.gpu_slot --poll 0.05 --gpus"

rule all:
    input: expand("run/{{i}}.txt", i=range(6))

rule train:
    output: "run/{{i}}.txt"
    resources: gpu=1
    shell: "{{GPU_SLOT}} {{resources.gpu}} -- {python} {job} {{output}}"
"""

TOY_JOB = """
import os, sys, time
dev = os.environ["CUDA_VISIBLE_DEVICES"]
try:                                   # a job owns its GPU: nobody else may hold the marker
    fd = os.open(f"busy-{dev}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
except FileExistsError:
    sys.exit(f"GPU {dev} shared by two jobs")
time.sleep(0.3)
os.close(fd)
os.remove(f"busy-{dev}")
open(sys.argv[1], "w").write(dev)
"""


@pytest.mark.slow
def test_local_gpu_profile_runs_one_job_per_gpu(tmp_path):
    (tmp_path / "job.py").write_text(TOY_JOB)
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE.format(
        python=sys.executable, job=tmp_path / "job.py"))
    env = clean_env(CUDA_VISIBLE_DEVICES="0,1", GPU_SLOT_LOCK_DIR=str(tmp_path / "locks"))
    res = subprocess.run(
        [str(SNAKEMAKE), "--profile", str(LOCAL_GPU_PROFILE), "--cores", "4", "--resources", "gpu=2",
         "--retries", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    devices = [(tmp_path / "run" / f"{i}.txt").read_text() for i in range(6)]
    assert set(devices) <= {"0", "1"}
    assert res.stderr.count("gpu_slot: CUDA_VISIBLE_DEVICES=") == 6
