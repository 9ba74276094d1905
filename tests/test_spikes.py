"""Training-error spikes (fig. 11): the spike count on hand-made curves, against a brute-force
definition on random ones, the runs' specs, and spikes.csv from run folders."""

import copy
import json
import math
import random
from pathlib import Path

import pytest
import yaml

from delay_stability.experiments import spikes as sp

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def test_count_spikes_on_hand_made_curves():
    # falls to 0.10, jumps to 0.30 (height 0.20), back to 0.12 <= 0.10 + 0.025: one spike
    curve = [0.9, 0.5, 0.1, 0.3, 0.2, 0.12, 0.1]
    found = sp.count_spikes(curve, margin=0.05)
    assert found["spikes"] == 1 and found["heights"] == [pytest.approx(0.2)] and not found["open_spike"]
    assert found["starts"] == [3]
    # a rise of less than the margin is no spike; a rise that never comes back is open, not counted
    assert sp.count_spikes([0.5, 0.2, 0.24, 0.2], 0.05)["spikes"] == 0
    still_up = sp.count_spikes([0.5, 0.2, 0.4, 0.35], 0.05)
    assert still_up["spikes"] == 0 and still_up["open_spike"]
    # two spikes; the second measured from the running minimum reached after the first
    two = sp.count_spikes([0.3, 0.1, 0.5, 0.1, 0.05, 0.25, 0.3, 0.06], 0.05)
    assert two["spikes"] == 2 and two["heights"] == [pytest.approx(0.4), pytest.approx(0.25)]
    # a diverged run: counting stops at the first non-finite error
    assert sp.count_spikes([0.3, 0.1, 0.5, float("nan"), 0.1], 0.05) == \
        {"spikes": 0, "heights": [], "open_spike": True, "starts": []}
    with pytest.raises(Exception, match="spike_margin"):
        sp.count_spikes([0.1], 0.0)


def brute_force(errors, margin):
    """The definition read literally: for each start t (e_t > min(e_<t) + margin, outside a spike),
    the recovery u is the first later epoch with e_u <= min(e_<t) + margin/2."""
    spikes, t = [], 1
    while t < len(errors):
        base = min(errors[:t])
        if errors[t] > base + margin:
            later = [u for u in range(t + 1, len(errors)) if errors[u] <= base + margin / 2]
            if not later:
                return spikes, True
            u = later[0]
            spikes.append(max(errors[t:u]) - base)
            t = u + 1
        else:
            t += 1
    return spikes, False


def test_count_spikes_agrees_with_the_brute_force_definition_on_random_curves():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 40)
        curve = [round(rng.random() * 0.6, 2) for _ in range(n)]
        heights, open_ = brute_force(curve, 0.1)
        found = sp.count_spikes(curve, 0.1)
        assert found["heights"] == pytest.approx(heights) and found["open_spike"] == open_, curve


def test_three_variants_share_every_hyperparameter_but_the_momentum_rule():
    block = CONFIG["quick"]["spikes"]
    runs = sp.runs(block, block["train"])
    assert len(runs) == len(block["variants"]) * len(block["seeds"])
    by_variant = {r.axes["variant"]: r.spec for r in runs if r.axes["seed"] == 0}
    assert {v: s["optimizer"]["momentum"] for v, s in by_variant.items()} == \
        {"momentum": block["momentum"], "plain": 0.0, "shifted": block["momentum"]}
    strip = [dict(s, optimizer={k: v for k, v in s["optimizer"].items() if k not in ("variant", "momentum")})
             for s in by_variant.values()]
    assert all(s == strip[0] for s in strip) and strip[0]["optimizer"]["delay"] == block["tau"]
    assert strip[0].get("lr_schedule", {"kind": "constant"}) == {"kind": "constant"}  # no LR decay


def fake_run(folder, variant, seed, errors, status="completed"):
    folder.mkdir(parents=True)
    spec = {"seed": seed, "lr": 0.1, "optimizer": {"variant": variant, "delay": 8,
                                                   "momentum": 0.0 if variant == "plain" else 0.9}}
    (folder / "run.json").write_text(json.dumps({"spec": spec}))
    final = {"train_error": errors[-1] if math.isfinite(errors[-1]) else None, "val_error": 0.2}
    (folder / "summary.json").write_text(json.dumps({"status": status, "final": final}))
    lines = ["epoch,train_error,val_error,train_loss"] + [f"{i},{e},0.2,1.0" for i, e in enumerate(errors)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_spikes_csv_has_the_issue_columns_one_row_per_run(tmp_path):
    folders = [fake_run(tmp_path / "s", "shifted", 1, [0.9, 0.5, 0.1, 0.05, 0.05]),
               fake_run(tmp_path / "m", "momentum", 0, [0.9, 0.5, 0.1, 0.4, 0.1, 0.05])]
    rows = sp.write_tables(folders, 0.05, str(tmp_path / "spikes.csv"), str(tmp_path / "curves.csv"))
    header = (tmp_path / "spikes.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["variant", "seed", "spikes", "mean_height", "final_train_error"]
    assert [(r["variant"], r["seed"], r["spikes"]) for r in rows] == [("momentum", 0, 1), ("shifted", 1, 0)]
    assert rows[0]["mean_height"] == pytest.approx(0.3) and rows[0]["final_train_error"] == 0.05
    # epoch 0 (the starting weights) is not an epoch of training: it is not in the curve
    assert sp.run_rows(folders[1], 0.05)[1][0]["epoch"] == 1


def test_a_bad_variant_is_named():
    block = copy.deepcopy(CONFIG["quick"]["spikes"])
    block["variants"] = ["nesterov"]
    with pytest.raises(Exception, match="spikes.variants"):
        sp.runs(block, block["train"])
