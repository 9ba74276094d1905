"""The delay-mitigations figure (table from ``delay-stability mitigations-collect``)."""

from __future__ import annotations

import matplotlib
import numpy as np

from ..errors import UserError
from .style import by_name, caption, new_figure, plotter


@plotter("mitigations")
def plot_mitigations(tables, scale=None, options=None):
    """1/(a·η_max) vs τ per rule: the theory's edge 1/α* (lines) and the measured one (markers; open
    where censored, i.e. stable up to the search's α_max); right: measured/predicted."""
    options = options or {}
    t = by_name(tables, "mitigation", "lr_max", "predicted", "alpha_measured")
    if t.n_rows == 0:
        raise UserError("mitigations: edges.csv has no rows")
    labels = list(dict.fromkeys(t["mitigation"]))
    reference = options.get("reference", "plain")
    colors = dict(zip(labels, matplotlib.colormaps["tab10"](np.arange(len(labels)) % 10)))
    # rules with the same edge coincide: distinct markers, from large to small, keep each visible
    markers = dict(zip(labels, "osD^vPX*hp" * 2))
    sizes = dict(zip(labels, np.linspace(9, 3, len(labels))))
    fig, (ax, ax_r) = new_figure(ncols=2, width=10.0, height=4.0)
    for label in labels:
        rows = t.where(mitigation=label)
        order = np.argsort(rows["tau"])
        tau = rows["tau"][order]
        pred = rows["alpha_predicted"][order]
        meas = rows["alpha_measured"][order]
        censored = rows["censored"][order] == "True"
        exact = rows["exact"][order] == "True"
        style = dict(color=colors[label], lw=2.2 if label == reference else 1.2)
        finite = np.isfinite(pred)
        ax.plot(tau[finite], 1 / pred[finite], "-" if exact.all() else ":", **style)
        mark = dict(marker=markers[label], ms=sizes[label], ls="none")
        ax.plot(tau[~censored], 1 / meas[~censored], color=colors[label], label=label, **mark)
        ax.plot(tau[censored], 1 / meas[censored], mfc="none", mec=colors[label], **mark)
        ratio = rows["ratio"][order]
        ax_r.plot(tau[finite & ~censored], ratio[finite & ~censored], color=colors[label], lw=1,
                  **{**mark, "ls": "-"})
    ax.set(yscale="log", xlabel=r"delay $\tau$", ylabel=r"$1/(a\,\eta_{max})$  (base step $\eta$)")
    ax.legend(fontsize=6, ncol=3, loc="upper left")
    ax_r.axhspan(0.9, 1.1, color="0.9")
    ax_r.axhline(1.0, color="k", lw=0.8)
    ax_r.set(xlabel=r"delay $\tau$", ylabel=r"measured / predicted $\eta$ at the edge")
    a = float(t["sharpness"][0])
    return caption(fig, f"Delay mitigations at a minimum of sharpness a = {a:.4g}: lines, the theory's edge "
                        f"1/α* (solid: exact linearisation; dotted: gap-aware, from the scalar recurrence); "
                        f"markers, the measured 1/(a·η_max) of the fig. 2 search (open: censored, stable up to "
                        f"the search's α_max; a rule with an infinite edge has no line). Right: measured/predicted "
                        f"(grey band ±10%). η is the base step the user sets; '{reference}' is plain delayed SGD.",
                   scale)
