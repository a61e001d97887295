"""The throughput benchmark runs end to end in its CPU smoke mode (it checks that it runs, never a speed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


def test_smoke_mode_measures_all_four_paths_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARK)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    output = tmp_path / "throughput.json"
    report = benchmark.main(["--smoke", "--output", str(output), "--cache_dir", str(tmp_path / "cache")])
    saved = json.loads(output.read_text())
    names = [row["name"] for row in saved["results"]]
    assert names == ["hf_dual_encoder", "convirt_model_only", "convirt_end_to_end", "convirt_inference"]
    assert all(row["samples_per_s"] > 0 for row in saved["results"])
    assert saved["results"][0]["flops_per_sample"] > 0 and saved["matmul_peak_flops"] > 0
    assert saved["results"][2]["flops_per_sample"] == saved["results"][1]["flops_per_sample"]
    table = capsys.readouterr().out
    assert "| hf_dual_encoder |" in table and "| 1.00 |" in table and report["table"] in table
