# Exact stability theory: figures 6, 7, 8, 10, 4 (left) and the bridge to "Asynchrony begets Momentum".
# config["theory"][fig] -> `delay-stability theory-table` -> results/theory/{fig}.csv -> `delay-stability plot`
# (the generic figure rule `theory_figure`, workflow/rules/figures.smk)
# Tables are scale-independent (exact roots of the characteristic equations); they take seconds.

THEORY_FIGURES = ["fig6", "fig7", "fig8", "fig10", "fig4a", "bridge"]

#: config key of a theory figure -> the `theory-table` flag that sets it (lists: comma-separated)
THEORY_FLAGS = {"tau_max": "--tau-max", "b_max": "--b-max", "mu_max": "--mu-max", "momenta": "--momenta", "qs": "--qs"}


for _name in THEORY_FIGURES:
    register_figure(_name, [THEORY_DIR / f"{_name}.csv"])


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

