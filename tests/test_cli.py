"""`delay-stability lr`, `threshold`, `theory-table` and `plot`: output, files, exit codes, messages."""

import json
import math

import pytest

from delay_stability import cli, plots, theory
from delay_stability.plots import style
from oracles import read_csv


def run(capsys, *argv):
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, *fragments):
    code, out, err = run(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last
    for fragment in fragments:
        assert fragment in last, (fragment, last)





# ------------------------------------------------------------------------------------------------
# lr and threshold
# ------------------------------------------------------------------------------------------------


def test_lr_prints_exact_and_eq8(capsys):
    code, out, _ = run(capsys, "lr", "--eta0", 0.1, "--tau", 32)
    assert code == 0
    exact = 0.1 * math.sin(math.pi / 130)  # η0 α*(32)/α*(0) with α*(τ) = 2 sin(π/(4τ+2))
    eq8 = math.pi * 0.1 / (4 * 32.5)
    assert f"{exact:.12g}" in out and f"{eq8:.12g}" in out
    assert "eq. 8" in out


def test_lr_json(capsys):
    code, out, _ = run(capsys, "lr", "--eta0", 0.2, "--tau", 8, "--momentum", 0.9, "--variant", "shifted", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["variant"] == "shifted" and result["momentum"] == 0.9
    assert result["eta"] == pytest.approx(theory.recommended_lr(0.2, 8, 0.9, "shifted"), rel=1e-12)
    assert result["eta_eq8"] == pytest.approx(math.pi * 0.2 / (4 * 8.5), rel=1e-15)
    assert result["alpha_star_0"] == pytest.approx(2 * 1.9 / 0.1, rel=1e-9)


def test_threshold_constant_delay(capsys):
    code, out, _ = run(capsys, "threshold", "--tau", 32, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["alpha_star"] == pytest.approx(2 * math.sin(math.pi / 130), rel=1e-9)
    assert result["variant"] == "plain" and result["delay"] == {"kind": "constant", "tau": 32}
    code, out, _ = run(capsys, "threshold", "--tau", 32)
    assert code == 0 and f"{2 * math.sin(math.pi / 130):.12g}" in out


def test_threshold_momentum_defaults_to_server_momentum(capsys):
    code, out, _ = run(capsys, "threshold", "--tau", 0, "--momentum", 0.9, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["variant"] == "momentum"
    assert result["alpha_star"] == pytest.approx(2 * 1.9 / 0.1, rel=1e-9)


@pytest.mark.parametrize("flags,delay", [
    (["--uniform", 1, 8], theory.uniform_delay(1, 8)),
    (["--gaussian", 6], theory.gaussian_delay(6)),
    (["--probs", "0.25,0.5,0.25"], [0.25, 0.5, 0.25]),
])
def test_threshold_delay_distributions(capsys, flags, delay):
    code, out, _ = run(capsys, "threshold", *flags, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["alpha_star"] == pytest.approx(theory.critical_alpha(delay), rel=1e-12)
    assert result["mean_delay"] == pytest.approx(theory.mean_delay(delay), rel=1e-12)


def test_threshold_geometric_is_momentum_edge(capsys):
    code, out, _ = run(capsys, "threshold", "--geometric", 0.75, "--json")
    assert code == 0
    assert json.loads(out)["alpha_star"] == pytest.approx(2 * 1.75 / 0.25, rel=1e-9)


@pytest.mark.parametrize("argv,fragments", [
    (["threshold", "--tau", "-1"], ["--tau", "non-negative"]),
    (["threshold", "--tau", "2.5"], ["--tau", "invalid int"]),
    (["threshold", "--tau", "4", "--momentum", "1"], ["--momentum", "(-1, 1)"]),
    (["threshold", "--tau", "4", "--momentum", "-1"], ["--momentum"]),
    (["threshold", "--probs", "0.5,0.6"], ["--probs", "sum to 1"]),
    (["threshold", "--probs", "0.5,x"], ["--probs"]),
    (["threshold", "--probs", "1.5,-0.5"], ["--probs", "non-negative"]),
    (["threshold", "--uniform", "5", "2"], ["--uniform", "low <= high"]),
    (["threshold", "--geometric", "1.5"], ["--geometric"]),
    (["threshold", "--gaussian", "3", "--variant", "shifted", "--momentum", "0.5"], ["shifted"]),
    (["threshold", "--tau", "3", "--variant", "plain", "--momentum", "0.5"], ["plain", "momentum"]),
    (["threshold", "--tau", "3", "--variant", "nesterov"], ["--variant", "invalid choice"]),
    (["threshold"], ["--tau"]),
    (["threshold", "--tau", "3", "--uniform", "1", "2"], ["not allowed"]),
    (["lr", "--tau", "3"], ["--eta0"]),
    (["lr", "--eta0", "0", "--tau", "3"], ["--eta0", "positive"]),
    (["lr", "--eta0", "-0.1", "--tau", "3"], ["--eta0"]),
])
def test_bad_input_gives_one_line_and_exit_2(capsys, argv, fragments):
    assert_user_error(capsys, argv, *fragments)


@pytest.mark.parametrize("command", ["lr", "threshold", "theory-table", "plot"])
def test_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "usage:" in out


# ------------------------------------------------------------------------------------------------
# theory-table
# ------------------------------------------------------------------------------------------------


def test_theory_table_fig6(tmp_path, capsys):
    out = tmp_path / "sub" / "fig6.csv"
    code, _, _ = run(capsys, "theory-table", "fig6", "--out", out, "--tau-max", 20)
    assert code == 0
    rows = read_csv(out)
    assert [int(r["tau"]) for r in rows] == list(range(21))
    for r in rows:
        tau = int(r["tau"])
        assert float(r["alpha_star"]) == pytest.approx(2 * math.sin(math.pi / (4 * tau + 2)), rel=1e-9)
        assert float(r["inv_alpha"]) * float(r["alpha_star"]) == pytest.approx(1.0, rel=1e-15)
        assert float(r["inv_alpha_eq7"]) == pytest.approx((2 * tau + 1) / math.pi, rel=1e-15)
        assert r["figure"] == "fig6" and r["variant"] == "plain"
    assert not list(tmp_path.glob("sub/.*.tmp"))  # no temporary left behind


def test_theory_table_fig7_fig8(tmp_path, capsys):
    assert run(capsys, "theory-table", "fig7", "--out", tmp_path / "fig7.csv", "--b-max", 6)[0] == 0
    rows = read_csv(tmp_path / "fig7.csv")
    assert [float(r["mean_delay"]) for r in rows] == pytest.approx([(1 + b) / 2 for b in range(1, 7)])
    assert float(rows[0]["alpha_star"]) == pytest.approx(1.0, rel=1e-9)  # unif{1,1}: τ = 1
    assert run(capsys, "theory-table", "fig8", "--out", tmp_path / "fig8.csv", "--mu-max", 4)[0] == 0
    rows = read_csv(tmp_path / "fig8.csv")
    assert [int(r["mu"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[2]["alpha_star"]) == pytest.approx(theory.critical_alpha(theory.gaussian_delay(3)))


def test_theory_table_momentum_sweeps(tmp_path, capsys):
    for fig, variant in (("fig10", "momentum"), ("fig4a", "shifted")):
        out = tmp_path / f"{fig}.csv"
        assert run(capsys, "theory-table", fig, "--out", out, "--tau-max", 3, "--momenta", "0,0.5")[0] == 0
        rows = read_csv(out)
        assert len(rows) == 8 and {r["variant"] for r in rows} == {variant}
        tau0 = [r for r in rows if int(r["tau"]) == 0 and float(r["momentum"]) == 0.5][0]
        assert float(tau0["alpha_star"]) == pytest.approx(6.0, rel=1e-9)  # 2(1+m)/(1−m)


def test_theory_table_bridge(tmp_path, capsys):
    out = tmp_path / "bridge.csv"
    assert run(capsys, "theory-table", "bridge", "--out", out, "--qs", "0.5,0.9")[0] == 0
    rows = read_csv(out)
    for r in rows:
        q = float(r["q"])
        assert float(r["alpha_star"]) == pytest.approx(2 * (1 + q) / (1 - q), rel=1e-9)
        assert float(r["matched_momentum"]) == pytest.approx(q, abs=1e-9)
        assert float(r["implicit_momentum"]) == pytest.approx(1 - 1 / float(r["workers"]), rel=1e-12)


@pytest.mark.parametrize("argv,fragments", [
    (["fig6", "--tau-max", "-1"], ["--tau-max", "non-negative"]),
    (["fig6", "--b-max", "3"], ["--b-max", "does not apply to fig6"]),
    (["fig7", "--b-max", "0"], ["--b-max", ">= 1"]),
    (["fig10", "--momenta", "0,1.5"], ["--momenta", "(-1, 1)"]),
    (["fig10", "--momenta", "a,b"], ["--momenta"]),
    (["bridge", "--qs", "1.0"], ["--qs"]),
    (["fig99"], ["invalid choice"]),
])
def test_theory_table_bad_options(tmp_path, capsys, argv, fragments):
    assert_user_error(capsys, ["theory-table", *argv, "--out", str(tmp_path / "t.csv")], *fragments)
    assert not (tmp_path / "t.csv").exists()


# ------------------------------------------------------------------------------------------------
# plot
# ------------------------------------------------------------------------------------------------

SMALL = {"fig6": ["--tau-max", 8], "fig7": ["--b-max", 6], "fig8": ["--mu-max", 4],
         "fig10": ["--tau-max", 6, "--momenta", "0,0.9"], "fig4a": ["--tau-max", 6, "--momenta", "0,0.9"],
         "bridge": ["--qs", "0,0.5,0.9"]}


@pytest.mark.parametrize("fig", sorted(SMALL))
def test_plot_theory_figures_write_pdf_and_png(tmp_path, capsys, fig):
    table = tmp_path / f"{fig}.csv"
    assert run(capsys, "theory-table", fig, "--out", table, *SMALL[fig])[0] == 0
    pdf = tmp_path / "figures" / f"{fig}.pdf"
    code, out, err = run(capsys, "plot", fig, "--table", table, "--out", pdf)
    assert code == 0, err
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert pdf.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in pdf.parent.iterdir() if p.name.startswith(".")]


def test_plotters_registry_covers_theory_figures():
    assert set(SMALL) <= set(plots.load_plotters())


def test_caption_states_scale():
    fig, ax = style.new_figure()
    style.caption(fig, "what it shows", "theory")
    texts = [t.get_text() for t in fig.texts]
    assert any("what it shows" in t and "scale-independent" in t for t in texts)
    fig, ax = style.new_figure()
    style.caption(fig, "x", "quick")
    assert any("quick scale" in t for t in (t.get_text() for t in fig.texts))


def test_plot_errors(tmp_path, capsys):
    good = tmp_path / "fig6.csv"
    run(capsys, "theory-table", "fig6", "--out", good, "--tau-max", 3)
    out = tmp_path / "f.pdf"
    assert_user_error(capsys, ["plot", "fig6", "--table", str(tmp_path / "missing.csv"), "--out", str(out)],
                      "missing.csv", "not found")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("tau,inv_alpha\n1,2,3\n")
    assert_user_error(capsys, ["plot", "fig6", "--table", str(ragged), "--out", str(out)], "ragged.csv", "corrupt")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_user_error(capsys, ["plot", "fig6", "--table", str(empty), "--out", str(out)], "empty.csv", "empty")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("tau,alpha\n1,2\n")
    assert_user_error(capsys, ["plot", "fig6", "--table", str(wrong), "--out", str(out)], "wrong.csv", "inv_alpha")
    assert_user_error(capsys, ["plot", "nofig", "--table", str(good), "--out", str(out)], "unknown figure")
    assert_user_error(capsys, ["plot", "fig6", "--table", str(good), "--out", str(tmp_path / "f.png")], "--out")
    assert_user_error(capsys, ["plot", "fig6", "--table", str(good), "--table", str(good), "--out", str(out)],
                      "exactly one")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# the messages of the edge cases: the flag and the fix, no traceback
# ------------------------------------------------------------------------------------------------


def test_a_list_flag_given_separate_values_names_the_flag_and_the_list_to_type(capsys):
    assert_user_error(capsys, ["threshold", "--probs", "0.5", "0.6"],
                      "--probs takes one comma-separated list", "--probs 0.5,0.6", "2 separate values")
    assert_user_error(capsys, ["threshold", "--tau", "3", "4"], "unrecognized arguments: 4",
                      "--tau takes one value: --tau 3")


def test_an_unknown_figure_is_named_before_the_other_flags(capsys):
    code, _, err = run(capsys, "plot", "fig99")
    message = err.strip().splitlines()[-1]
    assert code == 2 and "unknown figure 'fig99'" in message and "fig6" in message
    assert "--table" not in message and "Traceback" not in err


def test_a_bad_staleness_file_says_what_is_wrong_with_it(capsys, tmp_path):
    bad = tmp_path / "mine.csv"
    bad.write_text("update,worker\n0,1\n")
    code, _, err = run(capsys, "threshold", "--staleness", bad)
    assert code == 2 and "no column staleness (its header is update, worker)" in err
    assert "a staleness log is a CSV file with a header line naming a column staleness" in err
    assert "delete" not in err and err.count("\n") == 1
    bad.write_text("update,staleness\n0,1,3\n")
    code, _, err = run(capsys, "threshold", "--staleness", bad)
    assert code == 2 and "line 2 has 3 cells, its header 2" in err and "delete" not in err


def test_a_non_checkpoint_is_named_without_torchs_advice(capsys, tmp_path):
    import pickle

    foreign = tmp_path / "foreign.pt"
    with open(foreign, "wb") as f:
        pickle.dump({"a": complex(1, 2)}, f)  # a pickle of an object torch's safe loader refuses
    code, _, err = run(capsys, "sharpness", "--checkpoint", foreign, "--out", tmp_path / "o.json")
    assert code == 2 and "is not a delay-stability checkpoint" in err and str(foreign) in err
    assert "weights_only" not in err and "Traceback" not in err and err.count("\n") == 1
    text = tmp_path / "text.pt"
    text.write_text("hello")
    code, _, err = run(capsys, "sharpness", "--checkpoint", text, "--out", tmp_path / "o.json")
    assert code == 2 and "truncated or corrupted" in err and "weights_only" not in err


def test_a_spec_file_with_a_duplicated_key_names_it_and_its_line(capsys, tmp_path):
    spec = tmp_path / "run.yaml"
    spec.write_text("model: mlp\nlr: 0.1\nepochs: 3\nlr: 0.2\n")
    assert_user_error(capsys, ["train", "--spec", spec, "--out", tmp_path / "out"],
                      f"--spec: {spec}, line 4, column 1: duplicated key 'lr' (first given on line 2)")
    spec.write_text("model: mlp\nlr: [0.1\n")
    assert_user_error(capsys, ["train", "--spec", spec, "--out", tmp_path / "out"], f"{spec}, line 3, column 1")
    assert not (tmp_path / "out").exists()
