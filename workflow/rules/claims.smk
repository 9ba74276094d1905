# The claims ledger: every claim of both papers that a figure or table tests, with its measured value,
# 95% interval, seeds and verdict (delay_stability.experiments.claims). It reads the tidy tables the
# other experiments write, so this file is included after them; a table the scale does not build is
# reported in the ledger as missing (verdict unresolved), not required here.
#   tables -> `delay-stability claims-collect` -> results/<scale>/claims.csv -> docs/claims.md
from delay_stability.experiments import claims as claims_exp

CLAIM_TABLES = claims_exp.planned_tables(RESULTS, SCALE, EXP, THEORY_FIGURES, STABILITY_FIGURES, GEN_FIGURES)
CLAIMS_CSV = str(SCALE_DIR / "claims.csv")
#: The ledger's page: docs/claims.md at the quick scale (the one `make figures` builds), else per scale.
CLAIMS_PAGE = "docs/claims.md" if SCALE == "quick" else f"docs/claims-{SCALE}.md"
CLAIM_OPTIONS = {"fig13_epochs": list((GEN or {}).get("fig13", {}).get("epochs") or [])}

ALL_TARGETS.append(CLAIMS_CSV)
if not config["smoke"]:
    ALL_TARGETS.append(CLAIMS_PAGE)


rule claims:
    """claims.csv: one row per claim (claim, figure, statement, paper_value, measured, ci_low, ci_high,
    n_seeds, verdict, note) from the tables of this scale."""
    input:
        list(CLAIM_TABLES.values()),
    output:
        CLAIMS_CSV,
    params:
        results=lambda wc, output: str(Path(output[0]).parents[1]),   # results/<scale>/claims.csv -> results
        scale=SCALE,
        options=json.dumps(CLAIM_OPTIONS, sort_keys=True),
        code=src_hash("experiments.claims"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "claims.log"),
    shell:
        "delay-stability claims-collect --results {params.results} --scale {params.scale} "
        "--options {params.options:q} --out {output} > {log} 2>&1"


rule claims_page:
    """The ledger as a Markdown page (docs/claims.md at the quick scale)."""
    input:
        CLAIMS_CSV,
    output:
        CLAIMS_PAGE,
    params:
        scale=SCALE,
        code=src_hash("experiments.claims"),
    localrule: True
    conda:
        "../../environment.yml"
    log:
        str(LOGS / "claims_page.log"),
    shell:
        "delay-stability claims --scale {params.scale} --ledger {input} --markdown {output} > {log} 2>&1"
