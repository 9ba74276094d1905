"""Sharpness: top Hessian eigenvalue against closed forms and dense Hessians (float64).

The dense references are built here with torch.autograd.functional.hessian on a functional copy of
the model (modes set by hand on a deep copy), independently of delay_stability.sharpness.
"""

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from delay_stability import files
from delay_stability import sharpness as S
from delay_stability.errors import UserError
from oracles import dense_hessian, rel, top_dense

F = nn.functional


# ---------------------------------------------------------------- references and small problems


def symmetric_with_spectrum(eigenvalues, seed=0):
    """Q diag(eigenvalues) Qᵀ with a random orthogonal Q (float64)."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


def digits(n=240):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n] / 16.0, dtype=torch.float64)
    y = torch.tensor(d.target[:n])
    return x, y


@pytest.fixture(scope="module")
def trained_mlp():
    """A 64-12-10 tanh MLP trained by full-batch GD on 240 digits (near a minimum), float64."""
    torch.manual_seed(0)
    x, y = digits()
    model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    batches = list(zip(x.split(40), y.split(40)))
    return model, batches, top_dense(dense_hessian(model, F.cross_entropy, batches))


def small_cnn():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16, 10),
    ).double()


def cnn_batches():
    x, y = digits(90)
    x = x.view(-1, 1, 8, 8)
    return list(zip(x.split(32), y.split(32)))  # sizes 32, 32, 26: unequal weights


@pytest.fixture(scope="module")
def cnn():
    """A small CNN with BatchNorm (non-trivial running statistics), its batches, and the dense
    Hessians of both BatchNorm conventions."""
    model, batches = small_cnn(), cnn_batches()
    with torch.no_grad():
        model.train()
        model(torch.cat([x for x, _ in batches]))
    model.eval()
    hessians = {mode: dense_hessian(model, F.cross_entropy, batches, mode)
                for mode in ("train", "eval")}
    return model, batches, hessians


class Quadratic(nn.Module):
    """A 'model' whose mean loss is ½ wᵀ A w for every batch, so H = A exactly."""

    def __init__(self, a):
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(torch.ones(len(a), dtype=a.dtype))

    def forward(self, x):
        return 0.5 * (self.w @ self.a @ self.w) * torch.ones(len(x), dtype=self.a.dtype)


def mean_output(outputs, targets):
    return outputs.mean()


# ---------------------------------------------------------------- the solvers on dense matrices


@pytest.mark.parametrize("solver", [S.lanczos_top, S.power_top])
def test_solvers_find_top_eigenvalue_of_dense_matrix(solver):
    spectrum = np.concatenate([[5.0, 3.0], np.linspace(-1.0, 2.0, 198)])
    a = symmetric_with_spectrum(spectrum)
    res = solver(lambda v: a @ v, 200, tol=1e-8, max_iter=500, dtype=torch.float64)
    assert res.converged
    assert rel(res.eigenvalue, 5.0) < 1e-8
    # the reported residual is the true one, and the vector is a unit eigenvector
    y = res.eigenvector
    assert torch.linalg.vector_norm(y).item() == pytest.approx(1.0, abs=1e-12)
    true_residual = torch.linalg.vector_norm(a @ y - res.eigenvalue * y).item()
    assert true_residual == pytest.approx(res.residual, rel=1e-6, abs=1e-12)
    assert res.residual <= 1e-8 * 5.0
    assert res.hvps == len(res.history)


def test_lanczos_beats_power_in_products():
    spectrum = np.concatenate([[1.0], np.linspace(0.0, 0.9, 299)])
    a = symmetric_with_spectrum(spectrum, seed=3)
    lz = S.lanczos_top(lambda v: a @ v, 300, tol=1e-6, max_iter=300, dtype=torch.float64)
    pw = S.power_top(lambda v: a @ v, 300, tol=1e-6, max_iter=2000, dtype=torch.float64)
    assert lz.converged and pw.converged
    assert lz.hvps < 40 < pw.hvps


def test_lanczos_ritz_values_increase_monotonically_to_lambda_max():
    a = symmetric_with_spectrum(np.linspace(-3.0, 2.0, 50), seed=4)
    res = S.lanczos_top(lambda v: a @ v, 50, tol=1e-12, max_iter=50, dtype=torch.float64)
    assert all(b >= a_ - 1e-12 for a_, b in zip(res.history, res.history[1:]))
    assert all(h <= 2.0 + 1e-12 for h in res.history)
    assert rel(res.eigenvalue, 2.0) < 1e-10


def test_lanczos_is_exact_on_small_operator_and_eigenvector_start():
    a = symmetric_with_spectrum([4.0, 1.0, -2.0, 0.5, 0.25])
    res = S.lanczos_top(lambda v: a @ v, 5, tol=1e-14, max_iter=100, dtype=torch.float64)
    assert res.converged and res.hvps <= 5  # the Krylov space cannot exceed the dimension
    assert res.eigenvalue == pytest.approx(4.0, rel=1e-12)
    vecs = torch.linalg.eigh(a).eigenvectors
    warm = S.lanczos_top(lambda v: a @ v, 5, init=vecs[:, -1], dtype=torch.float64)
    assert warm.hvps == 1 and warm.converged
    assert warm.eigenvalue == pytest.approx(4.0, rel=1e-12)


@pytest.mark.parametrize("solver", [S.lanczos_top, S.power_top])
def test_negative_curvature_does_not_fool_the_solver(solver):
    """λmin = −10 dominates in magnitude; the answer must be λmax = 3 (largest algebraic)."""
    spectrum = np.concatenate([[-10.0, 3.0], np.linspace(-1.0, 1.0, 48)])
    a = symmetric_with_spectrum(spectrum, seed=5)
    res = solver(lambda v: a @ v, 50, tol=1e-8, max_iter=1000, dtype=torch.float64)
    assert res.converged
    assert res.eigenvalue == pytest.approx(3.0, rel=1e-7)
    if solver is S.power_top:  # the first phase found λmin, the second ran on H − λmin I
        assert res.shift == pytest.approx(-10.0, rel=1e-6)


def test_change_rule_stops_when_relative_change_is_small():
    a = symmetric_with_spectrum(np.concatenate([[2.0], np.linspace(0, 1.5, 99)]), seed=6)
    for solver in (S.lanczos_top, S.power_top):
        res = solver(lambda v: a @ v, 100, tol=1e-3, stop="change", max_iter=500,
                     dtype=torch.float64)
        h = res.history
        assert res.converged and res.stop == "change"
        assert abs(h[-1] - h[-2]) <= 1e-3 * abs(h[-1])
        assert all(abs(b - a_) > 1e-3 * abs(b) for a_, b in zip(h[:-2], h[1:-1]))


def test_solver_is_reproducible_with_a_generator():
    a = symmetric_with_spectrum(np.linspace(0, 1, 30), seed=7)
    runs = [S.lanczos_top(lambda v: a @ v, 30, tol=1e-6, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert runs[0].history == runs[1].history


# ---------------------------------------------------------------- models against dense Hessians


def test_least_squares_closed_form():
    """L(w) = (1/N) Σ (x_iᵀ w − y_i)², so H = 2 XᵀX / N exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g, dtype=torch.float64) * torch.arange(1.0, 7.0).double()
    y = torch.randn(100, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    expected = torch.linalg.eigvalsh(2 * x.T @ x / len(x))[-1].item()
    for method in ("lanczos", "power"):
        res = S.top_eigenvalue(model, F.mse_loss, [(x, y)], method=method, tol=1e-9,
                               max_iter=500)
        assert res.converged
        assert rel(res.eigenvalue, expected) < 1e-6


def test_mlp_matches_dense_hessian(trained_mlp):
    model, batches, expected = trained_mlp
    lz = S.top_eigenvalue(model, F.cross_entropy, batches, tol=1e-4)
    assert lz.converged and lz.hvps <= 30
    assert rel(lz.eigenvalue, expected) < 1e-4
    pw = S.top_eigenvalue(model, F.cross_entropy, batches, method="power", tol=1e-4,
                          max_iter=2000)
    assert pw.converged
    # residual rule: |θ − λ| ≤ ‖Hy − θy‖ ≤ tol·|θ|
    assert abs(pw.eigenvalue - expected) <= 1e-4 * abs(pw.eigenvalue) * (1 + 1e-9)
    assert pw.n_samples == 240 and pw.n_batches == 6


@pytest.mark.parametrize("backend", ["autograd", "func"])
def test_cnn_with_batchnorm_train_mode_matches_dense_hessian(cnn, backend):
    model, batches, hessians = cnn
    h = hessians["train"]
    expected = top_dense(h)
    lz = S.top_eigenvalue(model, F.cross_entropy, batches, bn_mode="train", backend=backend)
    assert lz.converged and lz.hvps <= 30 and lz.backend == backend
    assert rel(lz.eigenvalue, expected) < 1e-4
    pw = S.top_eigenvalue(model, F.cross_entropy, batches, method="power", backend=backend,
                          max_iter=1000)
    assert pw.converged
    assert abs(pw.eigenvalue - expected) <= 1e-4 * abs(pw.eigenvalue) * (1 + 1e-9)
    # the eigenvector is that of the dense Hessian (up to sign)
    v = torch.linalg.eigh(h).eigenvectors[:, -1]
    assert abs(torch.dot(v, lz.eigenvector).item()) > 1 - 1e-4


def test_cnn_with_batchnorm_eval_mode_matches_dense_hessian(cnn):
    model, batches, hessians = cnn
    expected, train_mode = top_dense(hessians["eval"]), top_dense(hessians["train"])
    assert rel(expected, train_mode) > 1e-3  # the two conventions really differ here
    res = S.top_eigenvalue(model, F.cross_entropy, batches, bn_mode="eval")
    assert res.converged and rel(res.eigenvalue, expected) < 1e-4


@pytest.mark.parametrize("backend", ["autograd", "func"])
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_hvp_equals_dense_hessian_times_vector(cnn, backend, bn_mode):
    model, batches, hessians = cnn
    h = hessians[bn_mode]
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = S.hvp(model, F.cross_entropy, batches, v, bn_mode=bn_mode, backend=backend)
    torch.testing.assert_close(got, h @ v, rtol=1e-9, atol=1e-11)


def test_backend_timing_picks_a_working_backend(cnn):
    """The accelerator path of backend="auto" times both backends; both must give the same H v."""
    model, batches, hessians = cnn
    with S.hessian_mode(model, "train"):
        op = S.HessianOperator(model, F.cross_entropy, batches, "auto")
        assert S._time_backends(op, *batches[0]) in ("func", "autograd")
        v = torch.ones(op.n, dtype=torch.float64)
        torch.testing.assert_close(op(v), hessians["train"] @ v, rtol=1e-9, atol=1e-11)
        assert op.backend == "autograd"  # the CPU choice, from benchmarks/sharpness.py


def test_batching_invariance_one_batch_vs_seven(trained_mlp):
    model, batches, expected = trained_mlp
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    seven = list(zip(x.split(35), y.split(35)))  # 6 × 35 + 30: unequal sizes
    assert len(seven) == 7
    one = S.top_eigenvalue(model, F.cross_entropy, [(x, y)], tol=1e-10, max_iter=200)
    many = S.top_eigenvalue(model, F.cross_entropy, seven, tol=1e-10, max_iter=200)
    assert rel(one.eigenvalue, many.eigenvalue) < 1e-9
    assert rel(many.eigenvalue, expected) < 1e-9


def test_negative_curvature_trap_through_a_model():
    spectrum = np.concatenate([[-10.0, 3.0], np.linspace(-1.0, 1.0, 18)])
    model = Quadratic(symmetric_with_spectrum(spectrum, seed=8))
    batches = [(torch.zeros(4, 1), torch.zeros(4))]
    for method in ("lanczos", "power"):
        res = S.top_eigenvalue(model, mean_output, batches, method=method, tol=1e-8,
                               max_iter=1000)
        assert res.converged and res.eigenvalue == pytest.approx(3.0, rel=1e-7)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_warm_start_converges_in_fewer_products(trained_mlp, method):
    model, batches, _ = trained_mlp
    model = copy.deepcopy(model)
    before = S.top_eigenvalue(model, F.cross_entropy, batches, method=method, max_iter=2000)
    for _ in range(5):  # a few more training steps: the weights move a little
        loss = sum(F.cross_entropy(model(x), y) for x, y in batches)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.05 * g
    expected = top_dense(dense_hessian(model, F.cross_entropy, batches))
    cold = S.top_eigenvalue(model, F.cross_entropy, batches, method=method, max_iter=2000)
    warm = S.top_eigenvalue(model, F.cross_entropy, batches, method=method, max_iter=2000,
                            init=before.eigenvector)
    assert cold.converged and warm.converged
    assert warm.hvps < cold.hvps
    assert rel(warm.eigenvalue, expected) < 1e-4


def test_model_modes_buffers_and_grads_are_restored():
    model = nn.Sequential(small_cnn(), nn.Dropout(0.5)).double()
    batches = cnn_batches()
    with torch.no_grad():
        model.train()
        model(batches[0][0])
    for start_mode in (True, False):
        model.train(start_mode)
        model[0][1].eval()  # a mixed state must come back exactly
        modes = [m.training for m in model.modules()]
        tracking = [m.track_running_stats for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        for bn_mode in ("train", "eval"):
            for backend in ("autograd", "func"):
                S.top_eigenvalue(model, F.cross_entropy, batches, bn_mode=bn_mode,
                                 backend=backend, max_iter=3)
        assert [m.training for m in model.modules()] == modes
        assert tracking == [m.track_running_stats for m in model.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for n, b in model.named_buffers():
            assert torch.equal(b, buffers[n]), n
        for n, p in model.named_parameters():
            assert torch.equal(p, params[n]) and p.grad is None, n


def test_dropout_is_off_so_the_result_is_deterministic(trained_mlp):
    model, batches, expected = trained_mlp
    with_dropout = nn.Sequential(model[0], nn.Dropout(0.5), *model[1:]).train()
    res = S.top_eigenvalue(with_dropout, F.cross_entropy, batches)
    assert rel(res.eigenvalue, expected) < 1e-4


def test_frozen_parameters_are_left_out(cnn):
    """Freezing the first conv's weight leaves the Hessian's trailing principal sub-block."""
    model, batches, hessians = cnn
    model = copy.deepcopy(model)
    model[0].weight.requires_grad_(False)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    skip = model[0].weight.numel()  # the first parameter in model.parameters() order
    expected = top_dense(hessians["train"][skip:, skip:])
    assert n == hessians["train"].shape[0] - skip
    for backend in ("autograd", "func"):
        res = S.top_eigenvalue(model, F.cross_entropy, batches, backend=backend)
        assert res.eigenvector.numel() == n
        assert rel(res.eigenvalue, expected) < 1e-4


def test_float32_model_agrees_with_float64_dense(trained_mlp):
    model, batches, expected = trained_mlp
    model32 = copy.deepcopy(model).float()
    batches32 = [(x.float(), y) for x, y in batches]
    res = S.top_eigenvalue(model32, F.cross_entropy, batches32)
    assert res.eigenvector.dtype == torch.float32
    assert res.converged and rel(res.eigenvalue, expected) < 1e-4


def test_batches_may_be_a_one_shot_generator(trained_mlp):
    model, batches, expected = trained_mlp
    res = S.top_eigenvalue(model, F.cross_entropy, (b for b in batches))
    assert rel(res.eigenvalue, expected) < 1e-4


@pytest.mark.parametrize("kwargs, word", [
    ({"method": "arnoldi"}, "method"),
    ({"bn_mode": "frozen"}, "bn_mode"),
    ({"stop": "never"}, "stop"),
    ({"backend": "jax"}, "backend"),
    ({"tol": 0.0}, "tol"),
    ({"max_iter": 0}, "max_iter"),
    ({"init": torch.zeros(3)}, "init"),
])
def test_bad_arguments_raise_user_errors_naming_them(kwargs, word):
    model, batches = small_cnn(), cnn_batches()
    with pytest.raises(UserError, match=word):
        S.top_eigenvalue(model, F.cross_entropy, batches, **kwargs)


def test_empty_batches_raise_user_error():
    with pytest.raises(UserError, match="batches"):
        S.top_eigenvalue(small_cnn(), F.cross_entropy, [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(trained_mlp):
    model, batches, expected = trained_mlp
    gpu = copy.deepcopy(model).cuda()
    for backend in ("autograd", "func", "auto"):
        res = S.top_eigenvalue(gpu, F.cross_entropy, batches, backend=backend)
        assert res.eigenvector.is_cuda and rel(res.eigenvalue, expected) < 1e-4


def test_json_record_is_written_atomically(tmp_path, trained_mlp):
    model, batches, _ = trained_mlp
    res = S.top_eigenvalue(model, F.cross_entropy, batches)
    out = tmp_path / "sub" / "sharpness.json"
    files.write_json(out, S.result_record(res, checkpoint="x.pt"))
    record = json.loads(out.read_text())
    assert record["eigenvalue"] == res.eigenvalue and record["hvps"] == res.hvps
    assert record["checkpoint"] == "x.pt" and record["bn_mode"] == "train"
    assert [p.name for p in out.parent.iterdir()] == ["sharpness.json"]
    assert math.isfinite(record["seconds"])
    assert not any(name.startswith(".tmp-") for name in os.listdir(out.parent))


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits MLP trained by `delay_stability.train.run_training` (mse, full batch)."""
    from delay_stability import train

    out = tmp_path_factory.mktemp("run")
    spec = {"model": "mlp", "model_args": {"hidden": [8]}, "dataset": "digits", "loss": "mse",
            "dtype": "float64", "device": "cpu", "threads": 1, "epochs": 20, "batch_size": 0,
            "lr": 0.5}
    train.run_training(spec, str(out))
    torch.set_num_threads(1)
    return out / "final.pt"


def checkpoint_problem(path, subset=0, batch_size=0):
    """Model, loss and training batches of a checkpoint, rebuilt as the CLI documents it."""
    from delay_stability import data, train

    model, spec = train.model_from_checkpoint(str(path), "cpu")
    ds = data.load_dataset(spec, "cpu")
    x, y = ds.train_x, ds.train_y
    if subset:
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:subset]
        x, y = x[pick], y[pick]
    size = batch_size or len(x)
    return model, train.build_loss(spec), list(zip(x.split(size), y.split(size)))


def run_cli(*argv):
    from delay_stability.cli import main

    return main(["sharpness", *map(str, argv)])


def test_cli_matches_dense_hessian_of_the_training_loss(digits_run, tmp_path):
    out = tmp_path / "s.json"
    assert run_cli("--checkpoint", digits_run, "--out", out, "--device", "cpu") == 0
    record = json.loads(out.read_text())
    model, loss_fn, batches = checkpoint_problem(digits_run)
    expected = top_dense(dense_hessian(model, loss_fn, batches))
    assert record["converged"] and rel(record["eigenvalue"], expected) < 1e-4
    assert record["n_samples"] == 1297 and record["batch_size"] == 0
    assert record["dtype"] == "float64" and record["bn_mode"] == "train"
    assert record["method"] == "lanczos" and record["tol"] == 1e-4
    assert record["checkpoint"] == str(digits_run)
    for key in ("hvps", "seconds"):
        assert record[key] > 0


def test_cli_subset_batches_and_power(digits_run, tmp_path):
    out = tmp_path / "s.json"
    assert run_cli("--checkpoint", digits_run, "--out", out, "--device", "cpu", "--subset", 300,
                   "--batch-size", 64, "--method", "power", "--tol", 1e-5,
                   "--max-iter", 2000) == 0
    record = json.loads(out.read_text())
    model, loss_fn, batches = checkpoint_problem(digits_run, subset=300, batch_size=64)
    expected = top_dense(dense_hessian(model, loss_fn, batches))
    assert record["n_samples"] == 300 and record["n_batches"] == 5 and record["batch_size"] == 64
    assert record["method"] == "power" and record["converged"]
    assert abs(record["eigenvalue"] - expected) <= 1e-5 * expected * (1 + 1e-9)


@pytest.mark.parametrize("argv, word", [
    (["--checkpoint", "missing.pt"], "missing.pt"),
    (["--subset", -1], "--subset"),
    (["--subset", 99999], "--subset"),
    (["--tol", 0], "--tol"),
])
def test_cli_user_errors_exit_2_with_one_line(digits_run, tmp_path, capsys, argv, word):
    args = {"--checkpoint": digits_run, "--out": tmp_path / "s.json", "--device": "cpu"}
    for flag, value in zip(argv[::2], argv[1::2]):
        args[flag] = value
    assert run_cli(*[item for pair in args.items() for item in pair]) == 2
    err = capsys.readouterr().err.strip()
    assert word in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


def test_cli_corrupt_checkpoint_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run_cli("--checkpoint", bad, "--out", tmp_path / "s.json") == 2
    assert "bad.pt" in capsys.readouterr().err
