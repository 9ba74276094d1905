"""Table 1 drawn (table from ``delay-stability table1-collect``): validation accuracy per arm."""

from __future__ import annotations

import numpy as np

from .style import caption, new_figure, one_table, plotter, rows_of


@plotter("table1")
def plot_table1(tables, scale=None, options=None):
    """Validation accuracy (mean ± std over seeds) of SB, LB, ASGD, +LR, +30% per network; the
    paper's value as a black tick where there is one; each bar labelled with its η."""
    rows = rows_of(one_table(tables, "table1"))
    o = options or {}
    nets = list(dict.fromkeys(str(r["network"]) for r in rows))
    arms = list(dict.fromkeys(str(r["arm"]) for r in rows))  # the table's order: SB, LB, ASGD, +LR, +30%
    cell = {(str(r["network"]), str(r["arm"])): r for r in rows}
    fig, ax = new_figure(width=max(5.5, 2.2 * len(nets) + 1.5), height=3.6)
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        xs, ys, es, lrs, papers = [], [], [], [], []
        for i, n in enumerate(nets):
            r = cell.get((n, arm))
            if r is None:
                continue
            xs.append(i + (j - (len(arms) - 1) / 2) * width)
            ys.append(float(r["val_accuracy"]))
            es.append(float(r["val_accuracy_std"]))
            lrs.append(float(r["lr"]))
            papers.append(float(r["paper"]))
        ax.bar(xs, ys, width * 0.95, yerr=es, capsize=2, color=f"C{j}", label=arm)
        for x, y, lr in zip(xs, ys, lrs):  # the bar's η, inside a tall bar, above a short one
            inside = y > 25
            ax.text(x, 1.0 if inside else y + 2, f"η {lr:.2g}", rotation=90, ha="center", va="bottom", fontsize=6,
                    color="white" if inside else "black")
        ok = np.isfinite(papers)
        if ok.any():
            ax.plot(np.array(xs)[ok], np.array(papers)[ok], "_", color="k", ms=12, mew=2,
                    label="paper" if j == 0 else None)
    ax.set_xticks(range(len(nets)), nets)
    ax.set(ylabel="validation accuracy (%)", ylim=(0, 105))
    ax.legend(fontsize=7, ncol=len(arms) + 1, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    sb = ("SB's η: the best of a scan at τ = 0" if o.get("scan") else "SB's η: each network's standard η")
    return caption(fig, f"Table 1: validation accuracy (mean ± std over {o.get('seeds', '?')} seeds). SB, LB: "
                        f"τ = 0 (LB: batch W·b, η ∝ {'√' if o.get('lr_scaling', 'sqrt') == 'sqrt' else ''}batch); "
                        f"ASGD: W workers of batch b, delay τ = {o.get('tau', '?')}, SB's η; +LR: LB's η × "
                        f"α*(τ)/α*(0); +30%: +LR with {100 * float(o.get('extra_epochs', 0.3)):g}% more epochs. "
                        f"{sb}. A diverged run counts at chance accuracy.", scale)
