# Exact stability theory: figures 6, 7, 8, 10, 4 (left) and the bridge to "Asynchrony begets Momentum".
# config["theory"][fig] -> `delay-stability theory-table` -> results/theory/{fig}.csv -> `delay-stability plot`
# Tables are scale-independent (exact roots of the characteristic equations); they take seconds.

THEORY_FIGURES = ["fig6", "fig7", "fig8", "fig10", "fig4a", "bridge"]

#: config key of a theory figure -> the `theory-table` flag that sets it (lists: comma-separated)
THEORY_FLAGS = {"tau_max": "--tau-max", "b_max": "--b-max", "mu_max": "--mu-max", "momenta": "--momenta", "qs": "--qs"}


ALL_TARGETS.extend(f for name in THEORY_FIGURES for f in figure(name))


rule theory_table:
    """The exact edge alpha* = a*eta of every point of a theory figure (root locus, eq. 4/11/19/26)."""
    output:
        str(THEORY_DIR / "{fig}.csv"),
    params:
        flags=lambda wc: " ".join(
            f"{THEORY_FLAGS[key]} {','.join(repr(float(v)) for v in value) if isinstance(value, list) else value}"
            for key, value in config["theory"][wc.fig].items()
        ),
        code=src_hash("experiments.theory"),
    wildcard_constraints:
        fig="|".join(THEORY_FIGURES),
    log:
        str(LOGS / "theory" / "{fig}.table.log"),
    conda:
        "../../environment.yml"
    shell:
        "delay-stability theory-table {wildcards.fig} --out {output} {params.flags} > {log} 2>&1"


rule theory_figure:
    """Plot a theory figure from its table only (PDF and PNG twin)."""
    input:
        str(THEORY_DIR / "{fig}.csv"),
    output:
        pdf=str(FIGURES / "{fig}.pdf"),
        png=report(
            str(FIGURES / "{fig}.png"),
            caption="../report/theory.rst",
            category="Theory (exact)",
            labels={"figure": "{fig}"},
        ),
    params:
        code=plots_hash("theory"),
    wildcard_constraints:
        fig="|".join(THEORY_FIGURES),
    localrule: True
    log:
        str(LOGS / "theory" / "{fig}.plot.log"),
    conda:
        "../../environment.yml"
    shell:
        "delay-stability plot {wildcards.fig} --table {input} --out {output.pdf} > {log} 2>&1"
