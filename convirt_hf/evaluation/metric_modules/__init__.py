"""The project's `evaluate` modules, one folder each (`<name>/<name>.py`); load them with
`convirt_hf.evaluation.metrics.load_metric(name)`, which passes their local path to `evaluate.load`.

The scripts are package data, not sub-packages: `evaluate` copies a script into its own modules cache and imports it
from there, so each one imports the project's code absolutely (`convirt_hf.evaluation.metrics`).
"""
