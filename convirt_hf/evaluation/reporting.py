"""Results files and markdown tables of the evaluation harness.

A results file is JSON: `{"metadata": {...}, "results": [...], "summary": [...]}`. Each result row names the model,
data, task, protocol, label fraction, seed, metric and value, which is what model cards turn into model-index
entries; `summary` holds the mean and standard deviation over seeds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from convirt_hf.atomic import atomic_write_text

__all__ = ["format_probe_table", "write_results"]


def write_results(path: str | os.PathLike, metadata: dict, results: Sequence[dict], summary: Sequence[dict],
                  overwrite: bool = False) -> Path:
    """Writes a results file atomically (a crash never leaves half a file); refuses to replace one unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass overwrite=True (--overwrite) to replace it")
    payload = json.dumps({"metadata": metadata, "results": list(results), "summary": list(summary)}, indent=2)
    return atomic_write_text(path, payload)


def _cell(row: dict | None, scale: float = 100.0) -> str:
    if row is None:
        return "n/a"
    if row["runs"] > 1:
        return f"{scale * row['mean']:.1f} ± {scale * row['std']:.1f}"
    return f"{scale * row['mean']:.1f}"


def format_probe_table(summary: Sequence[dict], model_names: dict[str, str] | None = None) -> str:
    """
    A markdown table shaped like the paper's Table 1: one row per model, one column per (task, label fraction),
    each cell the task's headline metric (x100) as mean ± standard deviation over seeds.
    """
    headline = [row for row in summary if row.get("headline")]
    # a row per (model, head): a probe with another head than the paper's linear one is its own row, named so
    models = list(dict.fromkeys((row["model"], row.get("head")) for row in headline))
    columns = list(dict.fromkeys((row["task"], row["metric"], row["fraction"]) for row in headline))
    index = {(row["model"], row.get("head"), row["task"], row["metric"], row["fraction"]): row for row in headline}
    names = model_names or {}
    header = "| model | " + " | ".join(f"{task} {metric} {100 * fraction:g}%"
                                       for task, metric, fraction in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for model, head in models:
        cells = [_cell(index.get((model, head, task, metric, fraction))) for task, metric, fraction in columns]
        name = names.get(model, model) + (f" ({head} head)" if head not in (None, "linear") else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
