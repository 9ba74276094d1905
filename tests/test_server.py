"""The parameter server with real worker processes on localhost (torchrun, gloo).

Every launch is bounded: at most 4 processes (server + 2 workers + torchrun's agent, or two agents),
a few hundred updates, and a hard wall-clock timeout (the process group is killed past it), so no
test can hang. The checks:

- homogeneous workers: the mean staleness is M − 1 (exact up to O(M/T) boundary terms, whatever
  the timing: every update skips, on average, one update of every other worker); with memoryless
  (exponential) jitter the histogram is close to the geometric law (1/M)(1 − 1/M)^k and far from
  round robin;
- every pushed gradient is applied once at its logged staleness: the server's final weights equal
  the sequential replay of the log (``server.replay``) to float tolerance;
- from a kicked minimum, η = 0.5× the edge predicted from the measured staleness (eq. 19) stays and
  2× leaves (a margin around the prediction);
- a worker killed mid-run (SIGKILL): the server goes on with the other and records it;
- the server killed mid-run (SIGKILL): torchrun restarts the group and the server resumes from its
  checkpoint (weights, momentum, version counter), ending equal to the replay of the whole log;
- ``parameter-server-launch``: every socket its processes listen on is bound to 127.0.0.1 (read from
  /proc/net/tcp and tcp6, matched to the processes' socket inodes); SIGKILL of the launcher ends
  every process of the launch; a launch refuses to start while a writer of an earlier one lives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from delay_stability import server, staleness, theory
from delay_stability.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN = Path(sys.executable).parent / "torchrun"
LAUNCH_TIMEOUT = 90  # seconds: a hard bound on every launch


# ------------------------------------------------------------------------------------------------
# fixtures: a tiny interpolating minimum, kicked along its top eigenvector
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kicked(tmp_path_factory):
    """A 64-16-10 tanh MLP on 24 digits (squared loss, float64), polished to an interpolating
    minimum, kicked by 1e-3 along its top Hessian eigenvector: (kick record, folder)."""
    from delay_stability import sharpness, spec, train
    from delay_stability.experiments import stability
    from delay_stability.files import write_json
    from delay_stability.models import build_model

    d = tmp_path_factory.mktemp("minimum")
    s = spec.validate_spec({"model": "mlp", "model_args": {"hidden": [16], "activation": "tanh"},
                            "dataset": "digits", "dataset_args": {"train_size": 24}, "loss": "mse",
                            "dtype": "float64", "batch_size": 0, "lr": 0.01, "epochs": 1, "device": "cpu"})
    torch.manual_seed(0)
    model = build_model("mlp", hidden=[16], activation="tanh").double()
    train.save_checkpoint(str(d / "init.pt"), {"spec": s, "model": model.state_dict()})
    stability.polish_minimum(str(d / "init.pt"), str(d / "min.pt"), str(d / "polish.json"), max_iter=15,
                             grad_tol=1e-10, device="cpu")
    run = train.load_run(str(d / "min.pt"), "cpu")
    a = sharpness.top_eigenvalue(run.model, run.loss_fn, run.batches(), tol=1e-10, max_iter=200).eigenvalue
    write_json(d / "sharpness.json", {"eigenvalue": a})
    kick = stability.kick_minimum(str(d / "min.pt"), str(d / "sharpness.json"), str(d / "kicked.pt"),
                                  str(d / "kick.json"), norm=1e-3, device="cpu")
    return kick, d


def _config(kick, phases, **extra):
    cfg = {"init_checkpoint": kick["checkpoint"], "sharpness": kick["sharpness"], "phases": phases,
           "timeout": 10.0, "worker_timeout": 1.0, "time_limit": 60.0, "checkpoint_every": 50, "eval_every": 5}
    cfg.update(extra)
    return cfg


def _stop_rule(kick, growth=3.0, settle=10.0, window=5):
    l0, l1 = kick["loss_minimum"], kick["loss_kicked"]
    return {"above": l0 + growth**2 * (l1 - l0), "below": l0 + (l1 - l0) / settle**2, "window": window}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _launch(cmds, out: Path, wait_for=None):
    """Start the torchrun command lines ``cmds`` (each in its own process group) and wait for all of
    them, or, with ``wait_for``, until that file exists (the others are then stopped); kill every
    group past LAUNCH_TIMEOUT. Returns the combined output."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                              start_new_session=True) for c in cmds]
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if wait_for is not None and wait_for.exists() and procs[0].poll() is None:
                time.sleep(0.5)  # the server has written its summary; its agent waits for the lost node
                break
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"launch did not finish within {LAUNCH_TIMEOUT} s")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        outs = [p.communicate(timeout=30)[0] for p in procs]
    return "\n".join(outs)


def _torchrun(cfg_path, out, *flags):
    return [str(TORCHRUN), *flags, "-m", "delay_stability.cli", "parameter-server", "--config", str(cfg_path),
            "--out", str(out)]


def _launcher(cfg_path, out, *flags):
    """``delay-stability parameter-server-launch``: torchrun's agent on loopback, in this process."""
    return [sys.executable, "-m", "delay_stability.cli", "parameter-server-launch", *flags, "--config",
            str(cfg_path), "--out", str(out)]


def _write(path, cfg):
    path.write_text(json.dumps(cfg))
    return path


def _phase(out, name):
    folder = Path(out) / name
    rows = [{k: int(float(v)) if k != "time" else float(v) for k, v in r.items()}
            for r in _read_rows(folder / "staleness.csv")]
    return rows, json.loads((folder / "summary.json").read_text()), torch.load(folder / "final_weights.pt")


def _read_rows(path):
    from delay_stability.files import read_csv

    return read_csv(path, "staleness log")


def _assert_replays(kick, out, name, variant="plain", momentum=0.0):
    rows, summary, w = _phase(out, name)
    problem = server.Problem(kick["checkpoint"])
    replayed = server.replay(problem, rows, summary["lr"], variant, momentum)
    assert [r["update"] for r in rows] == list(range(len(rows)))
    assert torch.allclose(replayed, w, rtol=1e-10, atol=1e-12), float((replayed - w).abs().max())
    return rows, summary


# ------------------------------------------------------------------------------------------------
# without processes: the update rule, the staleness histogram and its edge, the configuration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("velocity", ["gradient", "step"])
def test_apply_update_is_eq2_eq9_and_eq10(velocity):
    g1, g2 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 4.0], dtype=torch.float64)
    fresh = lambda: {"w": torch.zeros(2, dtype=torch.float64), "v": torch.zeros(2, dtype=torch.float64), "vs": {}}
    st = fresh()
    server.apply_update(st, g1, 1, 0.1, "plain", 0.0, velocity)
    assert torch.allclose(st["w"], -0.1 * g1, rtol=0, atol=1e-15)
    st = fresh()
    for g in (g1, g2):
        server.apply_update(st, g, 1, 0.1, "momentum", 0.5, velocity)
    v1 = -0.1 * 0.5 * g1
    v2 = 0.5 * v1 - 0.1 * 0.5 * g2
    assert torch.allclose(st["w"], v1 + v2, rtol=0, atol=1e-15)
    st = fresh()
    server.apply_update(st, g1, 1, 0.1, "shifted", 0.5, velocity)
    server.apply_update(st, g2, 2, 0.1, "shifted", 0.5, velocity)  # worker 2 has its own velocity
    assert torch.allclose(st["w"], -0.05 * g1 - 0.05 * g2, rtol=0, atol=1e-15)
    server.apply_update(st, g2, 1, 0.1, "shifted", 0.5, velocity)
    u = 0.5 * (0.5 * g1) + 0.5 * g2  # gradient units: u <- m u + (1-m) g; step units hold v = -eta u
    assert torch.allclose(st["vs"][1], u if velocity == "gradient" else -0.1 * u, rtol=0, atol=1e-15)
    assert torch.allclose(st["w"], -0.05 * g1 - 0.05 * g2 - 0.1 * u, rtol=0, atol=1e-15)


def test_the_edge_of_geometric_staleness_is_momentum_q_at_tau0():
    rng = np.random.default_rng(0)
    q = 0.75  # M = 4 workers
    samples = rng.geometric(1 - q, size=200_000) - 1  # P(k) = (1-q) q^k, k >= 0
    edge = server.predicted_edge(samples, 10.0, "plain", 0.0)
    assert edge["mean_staleness"] == pytest.approx(q / (1 - q), rel=0.02)
    assert edge["alpha_star"] == pytest.approx(2 * (1 + q) / (1 - q), rel=0.02)
    assert edge["predicted_lr"] == pytest.approx(edge["alpha_star"] / 10.0)
    assert staleness.total_variation(staleness.histogram(samples), staleness.geometric_law(4)) < 0.01


def test_a_bad_run_config_names_the_key(kicked):
    kick, _ = kicked
    with pytest.raises(UserError, match="factor but comes before edge_from"):
        server.check_config(_config(kick, [{"name": "a", "factor": 0.5, "updates": 10}]))
    with pytest.raises(UserError, match="unknown key"):
        server.check_config({**_config(kick, [{"name": "a", "lr": 0.1, "updates": 10}]), "lrr": 1})
    with pytest.raises(UserError, match="runs under torchrun"):
        path = _write(kicked[1] / "bad.json", _config(kick, [{"name": "a", "lr": 0.1, "updates": 10}]))
        env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
        try:
            server.serve(str(path), str(kicked[1] / "bad"))
        finally:
            os.environ.update(env)


# ------------------------------------------------------------------------------------------------
# real processes
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def homogeneous_run(kicked):
    """One launch, M = 2 homogeneous workers: 300 updates with memoryless jitter (exponential pauses,
    mean 15 ms, phase "geometric"); then without jitter a pilot of 300 updates, and continuations at
    0.5x and 2x the edge predicted from the pilot's staleness."""
    kick, d = kicked
    a = kick["sharpness"]
    stop = _stop_rule(kick)
    safe = 0.5 * theory.critical_alpha(1) / a
    cfg = _config(kick, [{"name": "geometric", "lr": safe, "updates": 300, "jitter": 0.015},
                         {"name": "pilot", "lr": safe, "updates": 300},
                         {"name": "x0.5", "factor": 0.5, "updates": 400, "stop": stop},
                         {"name": "x2", "factor": 2.0, "updates": 400, "stop": stop}], edge_from="pilot")
    out = d / "homogeneous"
    log = _launch([_launcher(_write(d / "homogeneous.json", cfg), out, "--nproc", "3")], out)
    assert (out / "summary.json").exists(), log[-4000:]
    return kick, out


def test_homogeneous_staleness_is_m_minus_one_and_near_geometric(homogeneous_run):
    kick, out = homogeneous_run
    rows, summary = _assert_replays(kick, out, "pilot")
    assert np.mean([r["staleness"] for r in rows]) == pytest.approx(1.0, abs=0.1)  # M - 1, without jitter too
    rows, summary = _assert_replays(kick, out, "geometric")
    s = [r["staleness"] for r in rows]
    assert len(s) == 300 and summary["workers"] == 2 and summary["jitter"] == 0.015
    assert np.mean(s) == pytest.approx(1.0, abs=0.1)  # M - 1
    p = staleness.histogram(s)
    tv_geometric = staleness.total_variation(p, staleness.geometric_law(2))
    tv_round_robin = staleness.total_variation(p, staleness.round_robin_law(2))
    assert tv_geometric < 0.3 and tv_round_robin > tv_geometric + 0.2  # fixed overheads pull it towards round robin
    assert {r["worker"] for r in rows} == {1, 2}
    assert all(r["staleness"] == r["update"] - r["pulled"] for r in rows)


def test_stays_below_and_leaves_above_the_predicted_edge(homogeneous_run):
    kick, out = homogeneous_run
    _, low = _assert_replays(kick, out, "x0.5")
    _, high = _assert_replays(kick, out, "x2")
    pilot = json.loads((out / "pilot" / "summary.json").read_text())
    edge = server.predicted_edge([r["staleness"] for r in _phase(out, "pilot")[0]], kick["sharpness"], "plain", 0.0)
    assert low["predicted_lr"] == pytest.approx(edge["predicted_lr"]) == high["predicted_lr"]
    assert low["lr"] == pytest.approx(0.5 * edge["predicted_lr"]) and high["lr"] == pytest.approx(2 * edge["predicted_lr"])
    assert pilot["outcome"] == "stayed"
    assert low["outcome"] == "stayed", low
    assert high["outcome"] == "left", high


def test_threshold_reads_the_staleness_log_of_a_run(homogeneous_run, run_cli):
    _, out = homogeneous_run
    path = out / "pilot" / "staleness.csv"
    status, text, _ = run_cli("threshold", "--staleness", path, "--json")
    assert status == 0
    expected = theory.critical_alpha(staleness.histogram(staleness.read_staleness(path)))
    assert json.loads(text)["alpha_star"] == pytest.approx(expected, rel=1e-12)
    status, text, _ = run_cli("lr", "--eta0", "0.1", "--staleness", path, "--momentum", "0.5", "--json")
    assert status == 0
    p = staleness.histogram(staleness.read_staleness(path))
    assert json.loads(text)["eta"] == pytest.approx(0.1 * theory.critical_alpha(p, 0.5, "momentum")
                                                    / theory.critical_alpha(0, 0.5, "momentum"))


def test_a_bad_staleness_file_is_one_line_naming_it(tmp_path, run_cli):
    bad = tmp_path / "staleness.csv"
    for text, what in [("update,worker\n0,1\n", "no column staleness"), ("update,staleness\n0,-1\n", "negative"),
                       ("update,staleness\n", "no updates"), ("update,staleness\n0,x\n", "not an integer")]:
        bad.write_text(text)
        status, _, err = run_cli("threshold", "--staleness", bad)
        assert status == 2 and str(bad) in err and what in err and err.count("\n") == 1, err
    status, _, err = run_cli("threshold", "--staleness", tmp_path / "missing.csv")
    assert status == 2 and "missing.csv" in err


def test_a_killed_worker_is_recorded_and_the_server_goes_on(kicked):
    """Two torchrun agents, as on two nodes (static rendezvous): node 0 runs the server and worker 1,
    node 1 runs worker 2, which is SIGKILLed after 40 gradients. Shifted momentum (one velocity per
    worker) at a fixed lr."""
    kick, d = kicked
    port = _free_port()
    cfg = _config(kick, [{"name": "run", "lr": 0.3 / kick["sharpness"], "updates": 400}], jitter=0.002,
                  variant="shifted", momentum=0.5, worker_timeout=0.5, fail={"rank": 2, "after_steps": 40})
    path, out = _write(d / "killed.json", cfg), d / "killed"
    common = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    log = _launch([_torchrun(path, out, *common, "--node-rank", "0", "--nproc-per-node", "2"),
                   _torchrun(path, out, *common, "--node-rank", "1", "--nproc-per-node", "1")], out,
                  wait_for=out / "summary.json")
    assert (out / "summary.json").exists(), log[-4000:]
    rows, summary = _assert_replays(kick, out, "run", "shifted", 0.5)
    assert len(rows) == 400 and summary["updates"] == 400
    from_2 = [r["update"] for r in rows if r["worker"] == 2]
    assert len(from_2) == 39  # its 40th gradient was never pushed
    assert all(r["worker"] == 1 for r in rows[from_2[-1] + 1:])
    lost = json.loads((out / "summary.json").read_text())["lost"]
    # on a loaded machine a live worker may fall silent past worker_timeout too: lost, then revived
    events = {w: [e["event"] for e in lost if e["rank"] == w] for w in (1, 2)}
    assert events[2] == ["lost", "revived"] * (len(events[2]) // 2) + ["lost"], lost
    assert events[1] == ["lost", "revived"] * (len(events[1]) // 2), lost
    assert [e for e in lost if e["rank"] == 2][-1]["last_update"] == from_2[-1]


def test_a_killed_server_resumes_from_its_checkpoint(kicked):
    """One agent with --max-restarts 1, server and one worker; the server SIGKILLs itself after update
    130 (last checkpoint: update 100). Server momentum, so the checkpoint must hold the velocity too."""
    kick, d = kicked
    cfg = _config(kick, [{"name": "run", "lr": 0.3 / kick["sharpness"], "updates": 250}], jitter=0.002,
                  variant="momentum", momentum=0.5, fail={"rank": 0, "after_steps": 130})
    out = d / "resumed"
    log = _launch([_torchrun(_write(d / "resumed.json", cfg), out, "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "1")], out)
    assert (out / "summary.json").exists(), log[-4000:]
    assert "killed (fault injection) at 130" in log and "resumed phase 0 at update 100" in log
    rows, summary = _assert_replays(kick, out, "run", "momentum", 0.5)
    assert len(rows) == 250
    assert summary["restarts"] == 1 and summary["resumed_at"] == {"phase": 0, "version": 100}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# the launcher: loopback only, its processes die with it, no rerun over live writers
# ------------------------------------------------------------------------------------------------


def _listening(pids):
    """(address, port) of every TCP socket in state LISTEN owned by one of ``pids`` (IPv4 and IPv6),
    from /proc/net/tcp{,6} and the processes' socket inodes."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:
            continue
    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or int(cols[9]) not in inodes:  # 0A: LISTEN
                continue
            hexaddr, port = cols[1].split(":")
            raw = bytes.fromhex(hexaddr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))  # host-order 32-bit words
            family = socket.AF_INET if size == 4 else socket.AF_INET6
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _rank_pids(out, n):
    folder = Path(out) / "pids"
    files = [folder / str(r) for r in range(n)]
    if not all(f.exists() and f.read_text().strip() for f in files):
        return None
    return [int(f.read_text()) for f in files]


def test_a_launch_listens_on_loopback_only_and_dies_with_its_launcher(kicked):
    """A launch of 3 processes (server + 2 workers) busy for a long phase: every listening socket of
    the launcher (both c10d stores) and of the ranks (gloo) is 127.0.0.1; kill -9 of the launcher
    alone (not its group) leaves no process of the launch alive."""
    kick, d = kicked
    cfg = _config(kick, [{"name": "long", "lr": 0.1 / kick["sharpness"], "updates": 10**7}], jitter=0.01)
    out = d / "network"
    proc = subprocess.Popen(_launcher(_write(d / "network.json", cfg), out, "--nproc", "3"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            ranks = _rank_pids(out, 3)
            if ranks and len(_listening(ranks)) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(1.0)  # the group is formed: every gloo pair listens
        sockets = _listening([proc.pid, *ranks])
        assert len(sockets) >= 5, sockets  # two stores (launcher) + a gloo listener per rank
        assert {addr for addr, _ in sockets} == {"127.0.0.1"}, sockets
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only: its children are in the same session
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in ranks):
            time.sleep(0.1)
        assert not any(_alive(p) for p in ranks), [p for p in ranks if _alive(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def test_a_launch_refuses_to_start_over_a_live_writer(kicked, tmp_path):
    """A process that holds the folder's writers' lock (as every rank does while it lives) makes a
    new launch exit with status 2 naming its pid, before any process starts; once it is gone, the
    check passes."""
    kick, d = kicked
    out = tmp_path / "busy"
    (out / "pids").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from delay_stability import server; "
                               "server.hold_writers_lock(sys.argv[1]); print('held', flush=True); time.sleep(120)",
                               str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (out / "pids" / "0").write_text(str(holder.pid))
        assert server.live_writers(out) == [holder.pid]
        path = _write(tmp_path / "cfg.json", _config(kick, [{"name": "a", "lr": 0.01, "updates": 10}]))
        res = subprocess.run(_launcher(path, out, "--nproc", "2"), env=_env(), capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 2, res.stderr
        assert f"still write there (pids {holder.pid})" in res.stderr and f"kill {holder.pid}" in res.stderr
        assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert not (out / "long").exists() and sorted(os.listdir(out / "pids")) == ["0"]
    finally:
        holder.kill()
        holder.wait()
    assert server.live_writers(out) == []


def test_a_launch_names_an_unknown_interface(tmp_path):
    res = subprocess.run(_launcher(tmp_path / "cfg.json", tmp_path / "o", "--nproc", "2", "--interface", "nosuch0"),
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--interface nosuch0: no such network interface" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert server.interface_address(server.loopback_interface()) == "127.0.0.1"
