"""Fault injection through the whole pipeline: nothing lost, nothing silent.

- a job that fails (or is killed) never destroys the finished result of its rule;
- SIGKILL of Snakemake and its jobs at random moments: the rerun finishes with every table and
  figure equal to an uninterrupted build's, and no damaged file under results/ or figures/;
- a kill inside a checkpoint write, and a full disk (simulated, and a real 2 MB tmpfs where the
  machine allows mounting one): the previous checkpoint is intact and the resumed run ends bit for
  bit as an uninterrupted one;
- damaged inputs (checkpoint.pt, final.pt, metrics.csv, summary.json, spec.json, a run folder of
  another spec or package version): a one-line error naming the file, exit status 2, nothing else
  touched.
"""

import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from delay_stability import __version__, train
from delay_stability.cli import main as cli_main
from workflow_util import (SNAKEMAKE, copy_workflow, edit_config, snakemake, tiny_eos, tiny_stability,
                           tiny_theory)

needs_snakemake = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake is not installed")


def quick_spec(**overrides):
    spec = dict(model="mlp", model_args={"hidden": [16], "activation": "tanh"}, dataset="digits",
                dataset_args={"train_size": 200}, loss="mse", dtype="float64", device="cpu", seed=1,
                threads=1, epochs=12, batch_size=50, lr=0.1, eval_every=1, checkpoint_every=2,
                optimizer={"delay": 2})
    spec.update(overrides)
    return spec


def snapshot(root):
    """{relative path: (size, mtime_ns, first bytes)} of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.read_bytes()[:64])
    return out


def same_weights(a, b):
    wa, wb = train.load_checkpoint(a)["model"], train.load_checkpoint(b)["model"]
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def rows_without_seconds(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------------------------
# A failed job never destroys a good result
# ------------------------------------------------------------------------------------------------

BASELINE = "results/quick/stability/baseline/final.pt"


def only_a_baseline(config):
    tiny_stability(config)


@needs_snakemake
def test_a_failed_or_killed_job_never_destroys_the_finished_baseline(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    edit_config(workdir, only_a_baseline)
    first = snakemake(workdir, "--cores", "1", BASELINE)
    assert first.returncode == 0, first.stderr[-2000:]
    original = (workdir / BASELINE).read_bytes()
    config_text = (workdir / "config.yaml").read_text()

    # 1. a spec that passes every check but fails when it runs (its start checkpoint is missing)
    edit_config(workdir, lambda c: c["quick"]["stability"]["baseline"].update(init_checkpoint="gone/start.pt"))
    failed = snakemake(workdir, "--cores", "1", BASELINE)
    assert failed.returncode != 0
    assert "gone/start.pt" in failed.stdout + failed.stderr  # the failed job's log, on the console
    assert not (workdir / BASELINE).exists()  # Snakemake removed the failed job's outputs ...
    kept = list((workdir / "results/quick/stability/baseline/.finished").glob("*/final.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == original  # ... the finished run is kept

    # 2. a valid, long spec, killed while it trains
    edit_config(workdir, lambda c: c["quick"]["stability"]["baseline"].update(init_checkpoint=None, epochs=10**6))
    proc = subprocess.Popen([str(SNAKEMAKE), "--cores", "1", BASELINE], cwd=workdir, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (workdir / "results/quick/stability/baseline/checkpoint.pt").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    kill_tree(proc)
    assert kept[0].read_bytes() == original

    # 3. back to the original config: the finished run comes back, untrained
    (workdir / "config.yaml").write_text(config_text)
    assert snakemake(workdir, "--unlock").returncode == 0
    again = snakemake(workdir, "--cores", "1", BASELINE)
    assert again.returncode == 0, again.stderr[-2000:]
    log = (workdir / "logs/train/results/quick/stability/baseline.log").read_text()
    assert "restored the finished run" in log
    assert (workdir / BASELINE).read_bytes() == original
    nothing = snakemake(workdir, "-n", BASELINE)  # one dry run: its message is on stdout or stderr
    assert "Nothing to be done" in nothing.stdout + nothing.stderr


def test_an_outputless_rerun_restores_the_finished_run_and_another_key_trains(tmp_path):
    out = tmp_path / "run"
    first = train.run_training(quick_spec(), str(out))
    weights = (out / "final.pt").read_bytes()
    for name in ("final.pt", "metrics.csv", "summary.json", "run.json"):  # as Snakemake does
        os.remove(out / name)
    restored = train.run_training(quick_spec(), str(out))
    assert restored == json.loads(json.dumps(first)) and (out / "final.pt").read_bytes() == weights
    # another code key (here: other modules) is another computation: trained, not restored
    other = train.run_training(quick_spec(), str(tmp_path / "other"), code=("delay_stability.theory",))
    assert other["status"] == first["status"]
    assert train.finished_runs(str(out)) != train.finished_runs(str(tmp_path / "other"))


def test_a_new_spec_keeps_the_previous_finished_run_until_it_is_finished(tmp_path):
    out = tmp_path / "run"
    train.run_training(quick_spec(), str(out))
    key = train.finished_runs(str(out))

    def crash(event, state):
        if event == "epoch" and state.epoch == 5:
            raise RuntimeError("a crash in the new run")

    with pytest.raises(RuntimeError):
        train.run_training(quick_spec(lr=0.05), str(out), callbacks=[crash])
    assert train.finished_runs(str(out)) == key  # the old result is still there
    train.run_training(quick_spec(lr=0.05), str(out))
    assert train.finished_runs(str(out)) != key and len(train.finished_runs(str(out))) == 1


# ------------------------------------------------------------------------------------------------
# SIGKILL anywhere
# ------------------------------------------------------------------------------------------------


def descendants(pid):
    """Every process below ``pid`` (from /proc), deepest first."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out[::-1]


def kill_tree(proc):
    """SIGKILL Snakemake and every job it started."""
    for pid in descendants(proc.pid) + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def assert_nothing_damaged(workdir):
    """Every visible file under results/ and figures/ reads whole (temporary files are hidden)."""
    for root in ("results", "figures"):
        for dirpath, dirnames, names in os.walk(workdir / root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in names:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                if name.endswith(".json"):
                    json.loads(path.read_text())
                elif name.endswith(".csv"):
                    with open(path, newline="") as f:
                        rows = list(csv.reader(f))
                    assert rows and all(len(r) == len(rows[0]) for r in rows), path
                elif name.endswith(".pt"):
                    train.load_checkpoint(str(path))
                elif name.endswith(".pdf"):
                    assert path.read_bytes()[:5] == b"%PDF-" and b"%%EOF" in path.read_bytes()[-64:], path
                elif name.endswith(".png"):
                    assert path.read_bytes()[:4] == b"\x89PNG" and path.read_bytes()[-8:-4] == b"IEND", path


def tables(workdir):
    """Every CSV under results/, without its timing columns."""
    return {str(p.relative_to(workdir)): rows_without_seconds(p)
            for p in sorted((workdir / "results").rglob("*.csv")) if "/." not in str(p)}


def tiny_pipeline(config):
    tiny_theory(config)
    tiny_stability(config)
    tiny_eos(config)
    block = config["quick"]["stability"]  # plain A-SGD only: fig4 then shows its m = 0 curve
    block["variants"] = {"plain": {"variant": "plain", "momenta": [0.0]}}
    block["plots"]["fig4"] = {"variant": "shifted", "momenta": [0.0]}


TARGETS = ("figures/fig2.pdf", "figures/fig12.pdf", "figures/fig4.pdf", "figures/fig6.pdf",
           "figures/delayed_eos.pdf", "results/quick/stability/thresholds.csv")


@needs_snakemake
@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    whole = copy_workflow(tmp_path / "whole")
    edit_config(whole, tiny_pipeline)
    t0 = time.time()
    done = snakemake(whole, "--cores", "2", *TARGETS)
    duration = time.time() - t0
    assert done.returncode == 0, done.stderr[-3000:]

    cut = copy_workflow(tmp_path / "cut")
    edit_config(cut, tiny_pipeline)
    rng = random.Random(2024)
    kills = 0
    for trial in range(3):
        proc = subprocess.Popen([str(SNAKEMAKE), "--cores", "2", *TARGETS], cwd=cut, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.15, 0.45) * duration)
        if proc.poll() is None:
            kill_tree(proc)
            kills += 1
        assert_nothing_damaged(cut)
        assert snakemake(cut, "--unlock").returncode == 0  # what the README says to type, then the same command
    final = snakemake(cut, "--cores", "2", *TARGETS)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 2
    assert_nothing_damaged(cut)
    assert tables(cut) == tables(whole)
    for fig in ("fig2", "fig12", "fig4", "fig6", "delayed_eos"):
        assert (cut / "figures" / f"{fig}.png").read_bytes() == (whole / "figures" / f"{fig}.png").read_bytes(), fig
    again = snakemake(cut, "-n", *TARGETS)
    assert "Nothing to be done" in again.stdout + again.stderr


# ------------------------------------------------------------------------------------------------
# A kill inside a checkpoint write; a full disk
# ------------------------------------------------------------------------------------------------

KILL_IN_SECOND_SAVE = """
import json, os, signal, sys
import torch
from delay_stability import train
real, count = torch.save, [0]
def save(obj, f, *args, **kwargs):
    count[0] += 1
    if count[0] == 2:                      # the second checkpoint: half written, then killed
        f.write(b"half a checkpoint"); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
torch.save = save
train.run_training(json.loads(sys.argv[1]), sys.argv[2])
"""


def test_a_kill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    spec = quick_spec()
    out = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_SECOND_SAVE, json.dumps(spec), str(out)],
                          capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert train.load_checkpoint(str(out / "checkpoint.pt"))["epoch"] == 2  # the first one, whole
    assert [n for n in os.listdir(out) if n.startswith(".tmp-")]            # the half write, hidden
    train.run_training(spec, str(out))
    train.run_training(spec, str(tmp_path / "whole"))
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert same_weights(str(out / "final.pt"), str(tmp_path / "whole" / "final.pt"))
    assert rows_without_seconds(out / "metrics.csv") == rows_without_seconds(tmp_path / "whole" / "metrics.csv")


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    spec = quick_spec()
    out = tmp_path / "full"
    real, count = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as err:
        train.run_training(spec, str(out))
    assert err.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real)
    assert train.load_checkpoint(str(out / "checkpoint.pt"))["epoch"] == 2
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # the failed write cleaned up
    train.run_training(spec, str(out))
    train.run_training(spec, str(tmp_path / "whole"))
    assert same_weights(str(out / "final.pt"), str(tmp_path / "whole" / "final.pt"))


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB tmpfs (needs root and a kernel that lets this process mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()}); the simulated ENOSPC test covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_keeps_the_previous_checkpoint_and_says_so(small_disk, tmp_path):
    spec = quick_spec()
    out = small_disk / "run"
    filler = small_disk / "filler"

    def fill_the_disk(event, state):
        if event == "epoch" and state.epoch == 3:
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass

    with pytest.raises(OSError) as err:
        train.run_training(spec, str(out), callbacks=[fill_the_disk])
    assert err.value.errno == errno.ENOSPC
    assert train.load_checkpoint(str(out / "checkpoint.pt"))["epoch"] == 2
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "delay_stability.cli", "train", "--spec", str(spec_file),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no space left" in proc.stderr and "Traceback" not in proc.stderr
    os.remove(filler)
    train.run_training(spec, str(out))
    train.run_training(spec, str(tmp_path / "whole"))
    assert same_weights(str(out / "final.pt"), str(tmp_path / "whole" / "final.pt"))


# ------------------------------------------------------------------------------------------------
# Damaged inputs: one line naming the file, exit status 2, nothing else touched
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    train.run_training(quick_spec(epochs=4), str(out))
    return out


def damaged_copy(src, dest, name, content):
    shutil.copytree(src, dest)
    (dest / name).write_bytes(content)
    return dest


def assert_one_line_error(capsys, argv, name, root):
    before = snapshot(root)
    assert cli_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "Traceback" not in err, err
    assert snapshot(root) == before  # nothing touched, the damaged file included


@pytest.mark.parametrize("content", [b"", b"garbage", None], ids=["empty", "garbage", "truncated"])
def test_a_damaged_checkpoint_to_resume_names_the_file(finished, tmp_path, capsys, content):
    good = (finished / "final.pt").read_bytes()
    out = damaged_copy(finished, tmp_path / "out", "checkpoint.pt", good[: len(good) // 2] if content is None else content)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(quick_spec(epochs=4)))
    assert_one_line_error(capsys, ["train", "--spec", spec, "--out", out], "checkpoint.pt", out)


def test_damaged_final_checkpoints_name_the_file(finished, tmp_path, capsys):
    good = (finished / "final.pt").read_bytes()
    out = damaged_copy(finished, tmp_path / "out", "final.pt", good[:1000])
    assert_one_line_error(capsys, ["sharpness", "--checkpoint", out / "final.pt", "--out", tmp_path / "s.json",
                                   "--device", "cpu"], "final.pt", out)
    assert not (tmp_path / "s.json").exists()
    assert_one_line_error(capsys, ["stability-polish", "--checkpoint", out / "final.pt", "--out", tmp_path / "m.pt",
                                   "--info", tmp_path / "m.json", "--device", "cpu"], "final.pt", out)


def test_a_damaged_spec_file_names_the_file(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text('{"model": "mlp", "epochs": ')
    assert_one_line_error(capsys, ["train", "--spec", spec, "--out", tmp_path / "o"], "spec.json", tmp_path)


def curve_folder(root, summary=None, metrics=None):
    """A finished long continuation (fig. 12) with its search, as stability-collect reads them."""
    search = root / "search" / "plain-m0" / "tau2" / "search.json"
    search.parent.mkdir(parents=True)
    search.write_text(json.dumps({"variant": "plain", "momentum": 0.0, "tau": 2, "sharpness": 10.0,
                                  "lr_max": 0.01, "lr_escape": 0.011, "alpha_measured": 0.1,
                                  "alpha_escape": 0.11, "alpha_theory": 0.1, "ratio": 1.0, "censored": False,
                                  "budget_epochs": 10, "probes": []}))
    curve = root / "curves" / "tau2" / "x1.5"
    curve.mkdir(parents=True)
    (curve / "curve.json").write_text(json.dumps({"variant": "plain", "momentum": 0.0, "tau": 2, "lr": 0.015,
                                                  "lr_factor": 1.5, "lr_max": 0.01}))
    (curve / "summary.json").write_text(summary if summary is not None else json.dumps({"status": "completed"}))
    (curve / "metrics.csv").write_text(metrics if metrics is not None else "epoch,train_loss,val_error\n0,1.0,0.5\n")
    return search, curve


@pytest.mark.parametrize("name, summary, metrics", [
    ("summary.json", '{"status": "compl', None),
    ("metrics.csv", None, "epoch,train_loss,val_error\n0,1.0,0.5\n1,0.9\n"),
    ("metrics.csv", None, "epoch,step\n0,0\n"),
])
def test_damaged_tables_and_summaries_name_the_file(tmp_path, capsys, name, summary, metrics):
    search, curve = curve_folder(tmp_path / "results" / "quick" / "stability", summary, metrics)
    out = tmp_path / "tables"
    out.mkdir()
    assert_one_line_error(capsys, ["stability-collect", "--search", search, "--curve", curve / "summary.json",
                                   "--thresholds", out / "t.csv", "--probes", out / "p.csv", "--curves",
                                   out / "c.csv"], name, tmp_path)


def test_a_run_folder_of_another_package_version_is_refused_or_redone(finished, tmp_path, capsys):
    out = tmp_path / "old"
    shutil.copytree(finished, out)
    ckpt = train.load_checkpoint(str(out / "final.pt"))
    ckpt["package_version"] = "0.0.1"
    torch.save(ckpt, out / "checkpoint.pt")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(quick_spec(epochs=4)))
    assert_one_line_error(capsys, ["train", "--spec", spec, "--out", out], "0.0.1", out)
    os.remove(out / "checkpoint.pt")
    torch.save(ckpt, out / "final.pt")
    for kept in (out / ".finished").iterdir():
        shutil.rmtree(kept)
    summary = train.run_training(quick_spec(epochs=4), str(out))  # a finished one is redone afresh
    assert summary["epochs_run"] == 4
    assert train.load_checkpoint(str(out / "final.pt"))["package_version"] == __version__


def test_a_damaged_checkpoint_of_another_run_is_named_not_moved(finished, tmp_path, capsys):
    out = damaged_copy(finished, tmp_path / "out", "checkpoint.pt", b"garbage")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(quick_spec(epochs=4, lr=0.3)))
    assert_one_line_error(capsys, ["train", "--spec", spec, "--out", out], "checkpoint.pt", out)


# ------------------------------------------------------------------------------------------------
# Job time limits: a long run is a chain of bounded jobs
# ------------------------------------------------------------------------------------------------


def test_a_run_past_its_time_limit_stops_with_a_checkpoint_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    from delay_stability.errors import TimeLimitReached

    spec = quick_spec(epochs=30, checkpoint_every=100)
    monkeypatch.setenv(train.JOB_SECONDS_ENV, "0")
    with pytest.raises(TimeLimitReached):
        train.run_training(spec, str(tmp_path / "chain"))
    assert train.load_checkpoint(str(tmp_path / "chain" / "checkpoint.pt"))["epoch"] == 1
    monkeypatch.delenv(train.JOB_SECONDS_ENV)
    train.run_training(spec, str(tmp_path / "chain"))
    train.run_training(spec, str(tmp_path / "whole"))
    assert same_weights(str(tmp_path / "chain" / "final.pt"), str(tmp_path / "whole" / "final.pt"))
    assert rows_without_seconds(tmp_path / "chain" / "metrics.csv") == rows_without_seconds(tmp_path / "whole" / "metrics.csv")


@needs_snakemake
def test_a_baseline_longer_than_the_job_limit_runs_as_a_chain_of_jobs(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    """A job limit of 0 s: every job of the chain trains its one epoch, checkpoints and exits 75, and
    Snakemake's retries run the next (a chain of exactly ``epochs`` jobs, on any machine)."""
    epochs = 3  # two resumptions: a resumed job is itself resumed
    edit_config(workdir, lambda c: (tiny_stability(c), c["quick"]["stability"]["baseline"].update(
        epochs=epochs, eval_every=2, checkpoint_every=4000)))
    result = snakemake(workdir, "--cores", "1", "--retries", "30", BASELINE, env={train.JOB_SECONDS_ENV: "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((workdir / "results/quick/stability/baseline/run.json").read_text())
    assert [r["epoch"] for r in run["resumed"]] == list(range(1, epochs))  # a chain of `epochs` jobs
    spec = json.loads((workdir / "results/quick/stability/baseline/spec.json").read_text())
    train.run_training(spec, str(tmp_path / "whole"))
    assert same_weights(str(workdir / BASELINE), str(tmp_path / "whole" / "final.pt"))
    assert rows_without_seconds(workdir / "results/quick/stability/baseline/metrics.csv") == \
        rows_without_seconds(tmp_path / "whole" / "metrics.csv")


@needs_snakemake
def test_max_job_minutes_caps_the_runtime_the_training_jobs_ask_for(tmp_path):
    workdir = copy_workflow(tmp_path / "project")
    result = snakemake(workdir, "-n", "figures/fig2.pdf", "--config", "scale=paper", "max_job_minutes=600")
    assert result.returncode == 0, result.stderr[-2000:]
    runtimes = [int(m) for m in __import__("re").findall(r"runtime=(\d+)", result.stdout)]
    assert runtimes and max(runtimes) == 600


# ------------------------------------------------------------------------------------------------
# Divergence is a result
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_overflow_and_nan_are_recorded_as_diverged_never_a_crash(tmp_path, dtype):
    from delay_stability.experiments import grid

    runs = grid.expand(quick_spec(dtype=dtype, epochs=40, checkpoint_every=10), {"lr": [0.05, 1e6]})
    for run in runs:
        train.run_training(run.spec, run.folder(tmp_path))
    summaries, metrics = grid.collect(runs, tmp_path)
    ok, blown = summaries
    assert ok["status"] == "completed" and blown["status"] == "diverged"
    assert blown["diverged"] in (True, "True") and int(blown["epochs_run"]) < 40
    last = train.read_metrics(str(Path(blown["run"]) / "metrics.csv"))[-1]
    import math
    assert last["train_loss"] is None or not math.isfinite(last["train_loss"]) or last["train_loss"] > 1e4
    json.loads((Path(blown["run"]) / "summary.json").read_text())  # valid JSON: NaN/inf written as null
