"""The experiments: one module per experiment, named like its workflow/rules/<name>.smk."""
