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


def test_cpu_demo_mode_reports_the_step_time_threads_and_the_split_of_a_step(tiny_corpus, tmp_path, capsys):
    """The default run's benchmark, on a tiny model: the real loop's s/step and a step split into its phases, timed
    past the end of the first epoch (64 pairs in batches of 8: 8 steps an epoch, 10 steps timed)."""
    spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARK)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    output = tmp_path / "cpu_demo.json"
    tiny = (f"--dataset {tiny_corpus} --retrieval_set none --text_tower scratch --text_layers 1 --text_hidden_size 32 "
            "--text_vocab_size 300 --image_model_name test_resnet --image_size 32 --per_device_batch_size 8 "
            "--max_length 32")
    benchmark.main(["--cpu_demo", "--steps", "6", "--warmup", "4", "--pretrain_args", tiny, "--output", str(output),
                    "--cache_dir", str(tmp_path / "cache")])
    result = json.loads(output.read_text())["results"][0]
    assert result["name"] == "cpu_demo" and result["seconds_per_step"] > 0 and result["threads"] >= 1
    assert set(result["split_seconds"]) == {"data", "image tower", "text side", "loss", "optimizer"}
    assert all(seconds > 0 for seconds in result["split_seconds"].values())
    assert "| image tower |" in capsys.readouterr().out
