#!/usr/bin/env python
"""The paper's evaluation in miniature, on the built-in synthetic corpus, in one command.

    python training/reproduce.py                                   # pretrains what it needs, then evaluates
    python training/reproduce.py --pretrained outputs/convirt-demo # reuses `make pretrain`'s model for tau = 0.1
    python training/reproduce.py --imagenet resnet18.a1_in1k       # adds an ImageNet baseline where weights exist

It pretrains ConVIRT on the synthetic corpus with the demo settings (`training/configs/demo.yaml`) once per
temperature of the ablation (tau = 0.01, 0.1, 1; tau = 0.1 is the paper's and the main model), then prints and saves
tables shaped like the paper's:

- Table 1a: the linear probe at 1%, 10% and 100% of the labels, random initialisation vs ConVIRT (plus ImageNet when
  `--imagenet` names weights), on four tasks standing for the paper's four (see `convirt_hf.evaluation.tasks`);
- Table 2: zero-shot image->image and text->image retrieval Precision@5/10/50, random initialisation vs ConVIRT;
- Table 4: the temperature ablation (linear probe at 1%, image->image and text->image P@10);
- a t-SNE map of the retrieval candidates' image embeddings, ConVIRT vs random initialisation.

Pretrained folders that already hold a finished run are reused, so a second call only evaluates. Everything is
written to `--output_dir` (`results.json`, `results.md`, the maps); `--markdown` puts the tables elsewhere too (the
project's docs/results.md is written this way).
"""

from __future__ import annotations

import logging
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from convirt_hf.cli import parse_arguments, positive, run_cli
from convirt_hf.evaluation.corpora import classification_splits, corpus_folder
from convirt_hf.evaluation.encoders import load_image_encoder
from convirt_hf.evaluation.features import encode_splits
from convirt_hf.evaluation.linear_probe import probe_inputs, run_linear_probe, summarise_runs
from convirt_hf.evaluation.reporting import format_probe_table, write_results
from convirt_hf.evaluation.retrieval import format_precision_table
from convirt_hf.evaluation.tasks import parse_task

logger = logging.getLogger("convirt_hf.reproduce")

MAIN_TAU = 0.1
RETRIEVAL_KS = (5, 10, 50)


@dataclass
class ReproduceArguments:
    output_dir: str = "outputs/reproduce"
    pretrained: str | None = field(default=None, metadata={"help": "a finished tau = 0.1 run to reuse (e.g. "
                                                           "outputs/convirt-demo); default: pretrain one"})
    taus: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0], metadata={"help": "the ablation's tau "
                                                                                  "values; must include 0.1"})
    pretrain_config: str = field(default="demo", metadata={"help": "the pretraining preset"})
    pretrain_overrides: str = field(default="", metadata={
        "help": "extra pretrain.py arguments in one string, e.g. --pretrain_overrides '--max_steps 150'"})
    tasks: list[str] = field(default_factory=lambda: ["findings", "category", "pneumonia", "fracture"])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    ablation_task: str = field(default="pneumonia", metadata={"help": "the task of the ablation's 1% linear probe "
                                                              "(the paper: RSNA Pneumonia)"})
    imagenet: str | None = field(default=None, metadata={"help": "an ImageNet-initialised encoder of the same "
                                                         "architecture (timm tag or weights file), when available"})
    markdown: str | None = field(default=None, metadata={"help": "also write the tables to this markdown file"})
    maps_dir: str | None = field(default=None, metadata={"help": "where the t-SNE PNGs go (default: --output_dir)"})
    cache_dir: str = "~/.cache/convirt_hf"
    synthetic_seed: int = 0
    synthetic_pretrain_size: int = 3000
    batch_size: int = 64

    def __post_init__(self):
        positive("batch_size", self.batch_size)
        if MAIN_TAU not in self.taus:
            raise ValueError(f"--taus must include {MAIN_TAU}, the main model's temperature, got {self.taus}")
        for tau in self.taus:
            positive("taus", tau)
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        self.parsed_tasks = [parse_task(spec) for spec in self.tasks]
        self.parsed_ablation_task = parse_task(self.ablation_task)
        if self.pretrained is not None and not (Path(self.pretrained) / "metrics.json").is_file():
            raise ValueError(f"--pretrained {self.pretrained} is not a finished pretraining run (no metrics.json)")


def pretrained_folder(args: ReproduceArguments, tau: float) -> Path:
    """The finished run for `tau`: reused when present, resumed when interrupted, otherwise pretrained now."""
    from convirt_hf.checkpointing import latest_checkpoint
    from convirt_hf.training import pretrain

    if tau == MAIN_TAU and args.pretrained is not None:
        return Path(args.pretrained)
    folder = Path(args.output_dir) / f"convirt-tau{tau:g}"
    if (folder / "metrics.json").is_file():
        logger.info("reusing the finished run %s", folder)
        return folder
    argv = ["--config", args.pretrain_config, "--tau", str(tau), "--output_dir", str(folder),
            "--cache_dir", args.cache_dir, "--synthetic_seed", str(args.synthetic_seed),
            "--synthetic_pretrain_size", str(args.synthetic_pretrain_size), *shlex.split(args.pretrain_overrides)]
    if latest_checkpoint(folder / "checkpoints") is not None:
        argv += ["--resume", "latest"]
    elif folder.exists():
        argv += ["--overwrite_output_dir"]  # a run that stopped before its first checkpoint: nothing to keep
    logger.info("pretraining %s: pretrain.py %s", folder, shlex.join(argv))
    pretrain.main(argv)
    return folder


def random_convirt_like(folder: Path, seed: int = 0):
    """A randomly initialised ConvirtModel of the same configuration (the retrieval baseline)."""
    from convirt_hf import ConvirtConfig, ConvirtModel

    config = ConvirtConfig.from_pretrained(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ConvirtModel(config).eval()


def retrieval_results(model, processor, retrieval, device) -> dict:
    from convirt_hf.evaluation.zero_shot import evaluate_retrieval

    return evaluate_retrieval(model, processor, retrieval, device=device, ks=RETRIEVAL_KS)


def probe(spec: str, name: str, records, tasks, args, device, image_size: int | None = None) -> list[dict]:
    encoder = load_image_encoder(spec, image_size=image_size)
    features = encode_splits(encoder, records, batch_size=args.batch_size, device=device, progress=False)
    rows = []
    for task in tasks:
        rows += run_linear_probe(task, probe_inputs(features, records, task.column), args.fractions, args.seeds, model_name=name,
                                 data_name="synthetic")
    return rows


def embedding_maps(models: dict, processor, retrieval, output_dir: Path, device) -> dict[str, Path]:
    from convirt_hf.evaluation.embedding_map import plot_embedding_map
    from convirt_hf.evaluation.zero_shot import embed_images

    paths = {}
    for name, model in models.items():
        embeddings = embed_images(model, processor, retrieval.candidates["image"], device)
        path = output_dir / f"tsne-{name.replace(' ', '-').replace('=', '')}.png"
        plot_embedding_map(embeddings, retrieval.candidate_labels, path, methods=("tsne",), seed=0,
                           title=f"{name}: retrieval candidates (image embeddings)")
        paths[name] = path
    return paths


def ablation_table(rows: list[dict], taus: list[float], task_name: str, headline: str) -> str:
    lines = [f"| tau | linear probe 1% ({task_name} {headline}) | image->image P@10 | text->image P@10 |",
             "|---|---|---|---|"]
    for tau in taus:
        cells = []
        for key in (("probe", tau), ("image->image", tau), ("text->image", tau)):
            row = next((r for r in rows if (r["kind"], r["tau"]) == key), None)
            if row is None or row["mean"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{100 * row['mean']:.1f}" + (f" ± {100 * row['std']:.1f}" if row.get("std") else ""))
        lines.append(f"| {tau:g}{' (paper default)' if tau == MAIN_TAU else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retrieval_rows(name: str, results: dict, tau: float | None = None) -> list[dict]:
    rows = []
    for direction, result in results.items():
        for k, value in result["mean"].items():
            rows.append({"model": name, "data": "synthetic", "task": "retrieval", "protocol": "retrieval",
                         "fraction": None, "seed": None, "metric": f"{direction}/P@{k}", "value": value,
                         "headline": k == 10, "tau": tau})
    return rows


def main(argv: list[str] | None = None) -> dict:
    (args, _preset) = parse_arguments((ReproduceArguments,), argv, description=__doc__)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from convirt_hf import ConvirtModel, ConvirtProcessor
    from convirt_hf.evaluation.scoring import headline_metric
    from convirt_hf.evaluation.zero_shot import load_retrieval_set

    started = time.time()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folders = {tau: pretrained_folder(args, tau) for tau in args.taus}
    main_folder = folders[MAIN_TAU]
    corpus = corpus_folder(None, args.cache_dir, args.synthetic_seed, args.synthetic_pretrain_size)
    records = classification_splits(corpus)
    retrieval = load_retrieval_set(corpus)
    processor = ConvirtProcessor.from_pretrained(main_folder)
    main_config = ConvirtModel.config_class.from_pretrained(main_folder)
    architecture, image_size = main_config.image_model_name, main_config.image_size

    # Table 1a: the linear probe, ConVIRT against its baselines
    results = probe(str(main_folder), "ConVIRT", records, args.parsed_tasks, args, device)
    # the baselines see the images at the resolution ConVIRT was trained at
    results += probe(f"random:{architecture}", "random init", records, args.parsed_tasks, args, device, image_size)
    if args.imagenet is not None:
        results += probe(args.imagenet, "ImageNet init", records, args.parsed_tasks, args, device, image_size)
    probe_summary = summarise_runs(results)

    # Table 2: retrieval, ConVIRT against a random model of the same shape
    convirt = ConvirtModel.from_pretrained(main_folder, dtype=torch.float32).to(device).eval()
    random_model = random_convirt_like(main_folder).to(device)
    retrieval_by_model = {"random init": retrieval_results(random_model, processor, retrieval, device),
                          "ConVIRT": retrieval_results(convirt, processor, retrieval, device)}
    for name, directions in retrieval_by_model.items():
        results += retrieval_rows(name, directions, MAIN_TAU if name == "ConVIRT" else None)
    maps_dir = Path(args.maps_dir) if args.maps_dir else output_dir
    maps_dir.mkdir(parents=True, exist_ok=True)
    maps = embedding_maps({"ConVIRT": convirt, "random init": random_model}, processor, retrieval, maps_dir, device)

    # Table 4: the temperature ablation
    ablation = []
    task = args.parsed_ablation_task
    for tau, folder in folders.items():
        if tau == MAIN_TAU:
            directions = retrieval_by_model["ConVIRT"]
            probe_rows = [r for r in results if r["model"] == "ConVIRT" and r["task"] == task.name]
            if not probe_rows:
                probe_rows = probe(str(folder), "ConVIRT", records, [task], args, device)
        else:
            model = ConvirtModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
            directions = retrieval_results(model, ConvirtProcessor.from_pretrained(folder), retrieval, device)
            probe_rows = probe(str(folder), f"ConVIRT tau={tau:g}", records, [task], args, device)
            results += retrieval_rows(f"ConVIRT tau={tau:g}", directions, tau) + probe_rows
        one_percent = [s for s in summarise_runs(probe_rows)
                       if s["fraction"] == min(args.fractions) and s["metric"] == headline_metric(task)]
        ablation.append({"kind": "probe", "tau": tau, **(one_percent[0] if one_percent else {"mean": None})})
        for direction, result in directions.items():
            ablation.append({"kind": direction, "tau": tau, "mean": result["mean"][10], "std": 0.0})

    elapsed = time.time() - started
    command = "python training/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    chance = retrieval.chance_rate()
    lines = [
        "# ConVIRT in miniature: the paper's tables on the synthetic corpus",
        "",
        f"Produced by `{command.strip()}` in {elapsed / 60:.1f} minutes on {platform.machine()} "
        f"({torch.get_num_threads()} threads{', ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}), "
        f"torch {torch.__version__}. Pretraining: preset `{args.pretrain_config}`"
        f"{' with `' + args.pretrain_overrides + '`' if args.pretrain_overrides else ''}; main model (tau 0.1) "
        f"`{main_folder}`{' (reused: `--pretrained`, e.g. what `make pretrain` wrote)' if args.pretrained else ''}. "
        f"Numbers are x100; mean ± standard deviation over seeds {args.seeds} (the label subsets "
        "differ per seed; at 100% they are the same, so the spread is 0).",
        "",
        "## Linear probe (the paper's Table 1a)",
        "",
        "Tasks: `findings` (7 findings, multi-label, mean AUC; stands for CheXpert), `category` (8 classes, "
        "accuracy; COVIDx), `pneumonia` (binary AUC; RSNA), `fracture` (binary AUC; MURA, scored per image: the synthetic corpus has no per-patient labels).",
        "",
        format_probe_table(probe_summary),
        "",
        "## Zero-shot retrieval (the paper's Table 2)",
        "",
        f"Precision@k over the retrieval set ({len(retrieval.candidates)} candidates, {len(retrieval.queries)} image "
        f"queries, {sum(len(v) for v in retrieval.text_queries.values())} text queries); chance is "
        f"{100 * chance:.1f}.",
        "",
    ]
    for name, directions in retrieval_by_model.items():
        lines += [f"**{name}**", "", format_precision_table(directions, RETRIEVAL_KS), ""]
    lines += [
        "## Temperature ablation (the paper's Table 4)",
        "",
        ablation_table(ablation, args.taus, task.name, headline_metric(task)),
        "",
        "## Image embeddings (t-SNE)",
        "",
    ]
    markdown_dir = Path(args.markdown).parent if args.markdown else output_dir
    for name, path in maps.items():
        lines.append(f"![{name}]({Path(_relative(path, markdown_dir)).as_posix()})")
    text = "\n".join(lines) + "\n"
    (output_dir / "results.md").write_text(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    metadata = {"protocol": "reproduce", "corpus": str(corpus), "pretrained": {str(t): str(f) for t, f in folders.items()},
                "chance_rate": chance, "runtime_seconds": round(elapsed, 1),
                "arguments": asdict(args), "ablation": ablation, "embedding_maps": {k: str(v) for k, v in maps.items()}}
    write_results(output_dir / "results.json", metadata, results, summarise_runs(results), overwrite=True)
    print(text)
    return {"metadata": metadata, "results": results, "summary": probe_summary, "ablation": ablation,
            "retrieval": retrieval_by_model, "markdown": text}


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def cli() -> None:
    run_cli(main, "convirt_hf.reproduce")


if __name__ == "__main__":
    cli()
