#!/usr/bin/env python
"""The paper's evaluation in miniature, on the built-in synthetic corpus, in one command.

    python training/reproduce.py                                   # pretrains what it needs, then evaluates
    python training/reproduce.py --pretrained outputs/convirt-demo # reuses `make pretrain`'s model for tau = 0.1
    python training/reproduce.py --imagenet resnet18.a1_in1k       # adds an ImageNet baseline where weights exist

It pretrains ConVIRT on the synthetic corpus with the demo settings (`training/configs/demo.yaml`) once per
temperature of the ablation (tau = 0.01, 0.1, 1; tau = 0.1 is the paper's and the main model) and once per projection
kind of its ablation other than the main model's (`--projections`; the main model is the MLP run), then prints and saves
tables shaped like the paper's:

- Table 1a: the linear probe at 1%, 10% and 100% of the labels, random initialisation vs ConVIRT (plus ImageNet when
  `--imagenet` names weights), on four tasks standing for the paper's four (see `convirt_hf.evaluation.tasks`);
- Table 2: zero-shot image->image and text->image retrieval Precision@5/10/50, random initialisation vs ConVIRT;
- Table 4: the temperature ablation (linear probe at 1%, image->image and text->image P@10);
- beyond the paper, the projection ablation (g_v/g_u as the paper's MLP, a linear layer or a Tversky projection;
  the same three metrics) and the probe-head ablation (the linear probe's logistic regression vs a Tversky head on
  ConVIRT's frozen features, every task and label fraction);
- a t-SNE map of the retrieval candidates' image embeddings, ConVIRT vs random initialisation.

Pretrained folders that already hold a finished run are reused, so a second call only evaluates; it needs
`--overwrite` to replace the first call's results. Everything is written to `--output_dir` (`results.json`,
`results.md`, the maps); `--markdown` puts the tables elsewhere too (the project's docs/results.md is written this
way).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from convirt_hf.cli import (
    argument_errors,
    check_folder_path,
    check_fraction,
    check_output_file,
    check_seeds,
    check_synthetic_corpus_arguments,
    configure_logging,
    one_of,
    parse_arguments,
    positive,
    resolve_preset,
    run_cli,
)
from convirt_hf.evaluation.corpora import classification_splits, corpus_folder
from convirt_hf.evaluation.encoders import check_image_encoder_spec, is_convirt_folder, load_image_encoder
from convirt_hf.evaluation.features import encode_splits
from convirt_hf.evaluation.linear_probe import HEADS, probe_inputs, run_linear_probe, summarise_runs
from convirt_hf.evaluation.reporting import format_probe_table, write_results
from convirt_hf.evaluation.retrieval import format_precision_table
from convirt_hf.evaluation.tasks import parse_task

logger = logging.getLogger("convirt_hf.reproduce")

MAIN_TAU = 0.1
RETRIEVAL_KS = (5, 10, 50)
# The results of a call, in --output_dir; a second call refuses to replace them without --overwrite.
RESULT_FILES = ("results.json", "results.md")
# The models whose t-SNE maps main() draws.
MAP_MODELS = ("ConVIRT", "random init")
# What reproduce.py passes to pretrain.py for each run it trains: an override of one of these would make it lose
# track of its own runs (or train them on another corpus than the one it evaluates on).
RESERVED_PRETRAIN_ARGUMENTS = ("config", "tau", "projection", "output_dir", "cache_dir", "synthetic_seed",
                               "synthetic_pretrain_size", "resume", "overwrite_output_dir")
# pretrain.py's --projection choices, its default, and the probe heads of the head ablation
PROJECTIONS = ("mlp", "linear", "tversky")
DEFAULT_PROJECTION = "mlp"
PROBE_HEADS = tuple(HEADS)


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
    projections: list[str] = field(default_factory=lambda: list(PROJECTIONS), metadata={
        "help": "the projection ablation's kinds (mlp, linear, tversky): one tau = 0.1 demo run each, the main "
                "model's kind reusing the main model; empty (in a --config preset) leaves the ablation out"})
    probe_heads: list[str] = field(default_factory=lambda: list(PROBE_HEADS), metadata={
        "help": "the probe-head ablation's heads (linear, tversky) on ConVIRT's features, every task and fraction; "
                "empty (in a --config preset) leaves the ablation out"})
    imagenet: str | None = field(default=None, metadata={"help": "an ImageNet-initialised encoder of the same "
                                                         "architecture (timm tag or weights file), when available"})
    markdown: str | None = field(default=None, metadata={"help": "also write the tables to this markdown file"})
    maps_dir: str | None = field(default=None, metadata={"help": "where the t-SNE PNGs go (default: --output_dir)"})
    cache_dir: str = "~/.cache/convirt_hf"
    synthetic_seed: int = 0
    synthetic_pretrain_size: int = 3000
    batch_size: int = 64
    overwrite: bool = field(default=False, metadata={"help": "replace the results (results.json, results.md, the "
                                                     "maps, --markdown) of an earlier call; finished pretraining "
                                                     "runs are reused either way"})

    def __post_init__(self):
        # Every check runs here, before the first pretraining run starts or anything is written.
        positive("batch_size", self.batch_size)
        if MAIN_TAU not in self.taus:
            raise ValueError(f"--taus must include {MAIN_TAU}, the main model's temperature, got {self.taus}")
        for tau in self.taus:
            positive("taus", tau)
        if len(set(self.taus)) != len(self.taus):
            raise ValueError(f"--taus lists a temperature twice: {self.taus}")
        check_seeds("seeds", self.seeds)
        if not self.fractions:
            raise ValueError("--fractions needs at least one label fraction, e.g. 0.01 0.1 1")
        for fraction in self.fractions:
            check_fraction("fractions", fraction)
        if not self.tasks:
            raise ValueError("--tasks needs at least one task")
        with argument_errors("tasks"):
            self.parsed_tasks = [parse_task(spec) for spec in self.tasks]
        names = [task.name for task in self.parsed_tasks]
        if len(set(names)) != len(names):  # their rows would be merged into one task's summary
            raise ValueError(f"--tasks names a task twice: {names}")
        with argument_errors("ablation_task"):
            self.parsed_ablation_task = parse_task(self.ablation_task)
        with argument_errors("pretrain_config"):
            preset = resolve_preset(self.pretrain_config)
        check_pretrain_overrides(self.pretrain_overrides)
        if self.pretrained is not None:
            if not (Path(self.pretrained) / "metrics.json").is_file():
                raise ValueError(f"--pretrained {self.pretrained} is not a finished pretraining run (no metrics.json)")
            if not is_convirt_folder(self.pretrained):
                raise ValueError(f"--pretrained {self.pretrained} is not a ConVIRT model folder (no config.json with "
                                 "model_type convirt)")
        for kind in self.projections:
            one_of("projections", kind, PROJECTIONS)
        if len(set(self.projections)) != len(self.projections):
            raise ValueError(f"--projections lists a projection twice: {self.projections}")
        for head in self.probe_heads:
            one_of("probe_heads", head, PROBE_HEADS)
        if len(set(self.probe_heads)) != len(self.probe_heads):
            raise ValueError(f"--probe_heads lists a head twice: {self.probe_heads}")
        # the main model's projection: its run stands for that kind in the projection ablation
        self.main_projection = main_projection(self.pretrained, preset)
        if self.imagenet is not None:
            with argument_errors("imagenet"):
                check_image_encoder_spec(self.imagenet)
        check_synthetic_corpus_arguments(self.cache_dir, self.synthetic_seed, self.synthetic_pretrain_size)
        check_folder_path("output_dir", self.output_dir)
        if self.maps_dir:
            check_folder_path("maps_dir", self.maps_dir)
        if self.markdown:
            check_output_file("markdown", self.markdown, self.overwrite)
        if not self.overwrite:
            self._check_no_earlier_results()

    def _check_no_earlier_results(self) -> None:
        """A second call reuses the finished pretraining runs, but replaces the first call's results only if asked."""
        written = {"output_dir": [Path(self.output_dir) / name for name in RESULT_FILES]}
        maps_argument = "maps_dir" if self.maps_dir else "output_dir"
        written.setdefault(maps_argument, []).extend(
            embedding_map_path(Path(getattr(self, maps_argument)), name) for name in MAP_MODELS)
        for argument, paths in written.items():
            found = [path.name for path in paths if path.exists()]
            if found:
                raise ValueError(f"--{argument} {getattr(self, argument)} holds the results of an earlier call "
                                 f"({', '.join(found)}): pass --overwrite to replace them (finished pretraining runs "
                                 "are reused either way)")


def main_projection(pretrained: str | None, preset: Path) -> str:
    """The projection kind of the main (tau = 0.1) model: `--pretrained`'s, or the one its preset trains with."""
    import json

    import yaml

    if pretrained is not None:
        return json.loads((Path(pretrained) / "config.json").read_text()).get("projection", DEFAULT_PROJECTION)
    values = yaml.safe_load(preset.read_text()) or {}
    return values.get("projection", DEFAULT_PROJECTION) if isinstance(values, dict) else DEFAULT_PROJECTION


def check_pretrain_overrides(overrides: str) -> None:
    """
    Refuses --pretrain_overrides that pretrain.py would refuse only once this script has started, or that would set
    what this script sets for each run: the string is parsed by pretrain.py's own argument parser, without running.
    """
    try:
        tokens = shlex.split(overrides)
    except ValueError as error:
        raise ValueError(f"--pretrain_overrides {overrides!r} is not a valid shell string: {error}") from error
    if not tokens:
        return
    from transformers import HfArgumentParser

    from convirt_hf.pretraining import DataArguments, ModelArguments, PretrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments),
                              add_help=False, exit_on_error=False)
    parser.add_argument("--config")
    unset = object()  # tells an argument the overrides set from one they leave at its default
    parser.set_defaults(**{name: unset for name in RESERVED_PRETRAIN_ARGUMENTS})
    try:
        namespace, unknown = parser.parse_known_args(tokens)
    except argparse.ArgumentError as error:
        raise ValueError(f"--pretrain_overrides {overrides!r}: {error}") from error
    if unknown:
        flags = [token for token in unknown if token.startswith("-")]
        raise ValueError(f"--pretrain_overrides {overrides!r}: " + (
            f"training/pretrain.py has no argument {', '.join(flags)}" if flags else f"unexpected value(s) {unknown}"))
    reserved = [f"--{name}" for name in RESERVED_PRETRAIN_ARGUMENTS if getattr(namespace, name, unset) is not unset]
    if reserved:
        raise ValueError(f"--pretrain_overrides must not set {', '.join(reserved)}: reproduce.py sets those itself for "
                         "each run it pretrains (use its own --pretrain_config, --taus, --projections, --output_dir, "
                         "--cache_dir, --synthetic_seed and --synthetic_pretrain_size)")


def embedding_map_path(folder: Path, model_name: str) -> Path:
    return folder / f"tsne-{model_name.replace(' ', '-').replace('=', '')}.png"


def run_folder(args: ReproduceArguments, tau: float, projection: str | None = None) -> Path:
    """
    Where the run for `tau` (with the preset's projection), or for `projection` at tau = 0.1, is: the main model's
    projection is the tau = 0.1 run itself (`--pretrained` when given).
    """
    if projection is not None and tau != MAIN_TAU:
        raise ValueError(f"the projection ablation's runs are at tau = {MAIN_TAU}, got {tau}")
    if projection == args.main_projection:
        projection = None
    if tau == MAIN_TAU and projection is None and args.pretrained is not None:
        return Path(args.pretrained)
    if projection is None:
        return Path(args.output_dir) / f"convirt-tau{tau:g}"
    return Path(args.output_dir) / f"convirt-projection-{projection}"


def is_finished_run(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def pretrained_folder(args: ReproduceArguments, tau: float, projection: str | None = None) -> Path:
    """The finished run of [`run_folder`]: reused when present, resumed when interrupted, otherwise pretrained now."""
    from convirt_hf.checkpointing import latest_checkpoint
    from convirt_hf.pretraining import DataArguments, ModelArguments, PretrainingArguments, pretrain

    folder = run_folder(args, tau, projection)
    if args.pretrained is not None and folder == Path(args.pretrained):
        return folder
    if is_finished_run(folder):
        logger.info("reusing the finished run %s", folder)
        return folder
    resume = latest_checkpoint(folder / "checkpoints") is not None
    # a run that stopped before its first checkpoint has nothing to keep: it is started over
    settings = {"tau": tau, "output_dir": str(folder), "cache_dir": args.cache_dir, "synthetic_seed": args.synthetic_seed,
                "synthetic_pretrain_size": args.synthetic_pretrain_size, "resume": "latest" if resume else None,
                "overwrite_output_dir": folder.exists() and not resume}
    if projection not in (None, args.main_projection):
        settings["projection"] = projection
    model_args, data_args, training_args, preset = parse_arguments(
        (ModelArguments, DataArguments, PretrainingArguments),
        ["--config", args.pretrain_config, *shlex.split(args.pretrain_overrides)],
    )
    model_args, data_args, training_args = (
        dataclasses.replace(arguments, **{k: v for k, v in settings.items() if k in arguments.__dataclass_fields__})
        for arguments in (model_args, data_args, training_args)
    )
    logger.info("pretraining %s (preset %s, %s)", folder, args.pretrain_config,
                ", ".join(f"{key} {value}" for key, value in settings.items() if key != "output_dir"))
    pretrain(model_args, data_args, training_args, preset=preset)
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


def probe(spec: str, name: str, records, tasks, args, device, image_size: int | None = None,
          heads: tuple[str, ...] = ("linear",)) -> list[dict]:
    """The linear probe of one encoder on `tasks`, with each of `heads` on the same features (encoded once)."""
    encoder = load_image_encoder(spec, image_size=image_size)
    features = encode_splits(encoder, records, batch_size=args.batch_size, device=device, progress=False)
    rows = []
    for head in heads:
        for task in tasks:
            rows += run_linear_probe(task, probe_inputs(features, records, task.column), args.fractions, args.seeds,
                                     model_name=name, data_name="synthetic", head=head)
    return rows


def linear_head(rows: list[dict]) -> list[dict]:
    """The rows (or summaries) of the paper's protocol: the linear head's, and those of protocols without heads."""
    return [row for row in rows if row.get("head", "linear") == "linear"]


def embedding_maps(models: dict, processor, retrieval, output_dir: Path, device) -> dict[str, Path]:
    from convirt_hf.evaluation.embedding_map import plot_embedding_map
    from convirt_hf.evaluation.zero_shot import embed_images

    paths = {}
    for name, model in models.items():
        embeddings = embed_images(model, processor, retrieval.candidates["image"], device)
        path = embedding_map_path(output_dir, name)
        plot_embedding_map(embeddings, retrieval.candidate_labels, path, methods=("tsne",), seed=0,
                           title=f"{name}: retrieval candidates (image embeddings)")
        paths[name] = path
    return paths


def ablation_table(rows: list[dict], values: list, task_name: str, headline: str, by: str = "tau",
                   labels: dict | None = None) -> str:
    """
    The ablation over `values` of `by` ("tau" or "projection"): the 1% linear probe's mean ± std over seeds and the
    P@10 of both retrieval directions; `labels` maps a value to its row's name (default: the value).
    """
    labels = labels or {}
    lines = [f"| {by} | linear probe 1% ({task_name} {headline}) | image->image P@10 | text->image P@10 |",
             "|---|---|---|---|"]
    for value in values:
        cells = []
        for kind in ("probe", "image->image", "text->image"):
            row = next((r for r in rows if r["kind"] == kind and r.get(by) == value), None)
            if row is None or row["mean"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{100 * row['mean']:.1f}" + (f" ± {100 * row['std']:.1f}" if row.get("std") else ""))
        lines.append(f"| {labels.get(value, value if by != 'tau' else f'{value:g}')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_rows(by: str, value, probe_rows: list[dict], directions: dict, task, fraction: float) -> list[dict]:
    """The ablation's entries for one run: its `fraction` linear probe summary and both directions' P@10."""
    from convirt_hf.evaluation.scoring import headline_metric

    summary = [s for s in summarise_runs(linear_head(probe_rows))
               if s["task"] == task.name and s["fraction"] == fraction and s["metric"] == headline_metric(task)]
    entries = [{"kind": "probe", by: value, **(summary[0] if summary else {"mean": None})}]
    for direction, result in directions.items():
        entries.append({"kind": direction, by: value, "mean": result["mean"][10], "std": 0.0})
    return entries


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
    configure_logging()
    from convirt_hf import ConvirtModel, ConvirtProcessor
    from convirt_hf.evaluation.scoring import headline_metric
    from convirt_hf.evaluation.zero_shot import load_retrieval_set

    started = time.time()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    planned = {run_folder(args, tau) for tau in args.taus} | {run_folder(args, MAIN_TAU, kind) for kind in args.projections}
    reused = {folder for folder in planned if is_finished_run(folder)}
    folders = {tau: pretrained_folder(args, tau) for tau in args.taus}
    main_folder = folders[MAIN_TAU]
    projection_folders = {kind: pretrained_folder(args, MAIN_TAU, kind) for kind in args.projections}
    pretraining_minutes = sum(_train_runtime_seconds(folder) for folder in planned) / 60
    corpus = corpus_folder(None, args.cache_dir, args.synthetic_seed, args.synthetic_pretrain_size)
    records = classification_splits(corpus)
    retrieval = load_retrieval_set(corpus)
    processor = ConvirtProcessor.from_pretrained(main_folder)
    main_config = ConvirtModel.config_class.from_pretrained(main_folder)
    architecture, image_size = main_config.image_model_name, main_config.image_size

    # Table 1a: the linear probe, ConVIRT against its baselines (and ConVIRT's probe with the head ablation's heads)
    heads = tuple(dict.fromkeys(("linear", *args.probe_heads)))
    results = probe(str(main_folder), "ConVIRT", records, args.parsed_tasks, args, device, heads=heads)
    # the baselines see the images at the resolution ConVIRT was trained at
    results += probe(f"random:{architecture}", "random init", records, args.parsed_tasks, args, device, image_size)
    if args.imagenet is not None:
        results += probe(args.imagenet, "ImageNet init", records, args.parsed_tasks, args, device, image_size)
    probe_summary = linear_head(summarise_runs(results))
    head_summary = [row for row in summarise_runs(results)
                    if row["model"] == "ConVIRT" and row.get("head") in args.probe_heads]

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

    # Table 4: the temperature ablation; then the projection ablation, whose main-model kind is the tau = 0.1 run
    task = args.parsed_ablation_task
    main_probe_rows = linear_head([r for r in results if r["model"] == "ConVIRT" and r["task"] == task.name])

    def evaluate_run(folder: Path, name: str, tau: float) -> tuple[list[dict], dict]:
        """The ablation task's probe rows and the retrieval results of one run (the main model's are reused)."""
        nonlocal main_probe_rows, results
        if folder == main_folder:
            if not main_probe_rows:  # the ablation task is not one of --tasks
                main_probe_rows = probe(str(folder), "ConVIRT", records, [task], args, device)
                results += main_probe_rows
            return main_probe_rows, retrieval_by_model["ConVIRT"]
        model = ConvirtModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        directions = retrieval_results(model, ConvirtProcessor.from_pretrained(folder), retrieval, device)
        probe_rows = probe(str(folder), name, records, [task], args, device)
        results += retrieval_rows(name, directions, tau) + probe_rows
        return probe_rows, directions

    ablation, projection_ablation = [], []
    for tau, folder in folders.items():
        probe_rows, directions = evaluate_run(folder, f"ConVIRT tau={tau:g}", tau)
        ablation += ablation_rows("tau", tau, probe_rows, directions, task, min(args.fractions))
    for kind, folder in projection_folders.items():
        probe_rows, directions = evaluate_run(folder, f"ConVIRT projection={kind}", MAIN_TAU)
        projection_ablation += ablation_rows("projection", kind, probe_rows, directions, task, min(args.fractions))

    elapsed = time.time() - started
    command = "python training/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    chance = retrieval.chance_rate()
    lines = [
        "# ConVIRT in miniature: the paper's tables on the synthetic corpus",
        "",
        f"Produced by `{command.strip()}` in {elapsed / 60:.1f} minutes on {platform.machine()} "
        f"({os.cpu_count()}-core CPU, {torch.get_num_threads()} threads, "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'no GPU'}), torch {torch.__version__}. "
        f"Pretraining: preset `{args.pretrain_config}`"
        f"{' with `' + args.pretrain_overrides + '`' if args.pretrain_overrides else ''}, {len(planned)} run(s), "
        f"{len(planned) - len(reused)} pretrained by this call and {len(reused)} reused from earlier ones "
        f"({pretraining_minutes:.1f} minutes of pretraining in all, by their metrics.json); main model (tau 0.1) "
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
        ablation_table(ablation, args.taus, task.name, headline_metric(task),
                       labels={MAIN_TAU: f"{MAIN_TAU:g} (paper default)"}),
        "",
    ]
    if args.projections:
        lines += [
            "## Projection ablation (beyond the paper)",
            "",
            f"The projections g_v and g_u: `mlp` (the paper's: one hidden layer and a ReLU), `linear`, and `tversky` "
            "(a Tversky projection layer, Doumbouya et al. 2025: the similarities of h to learned prototypes over a "
            f"learned feature bank). One tau = {MAIN_TAU:g} run each with preset `{args.pretrain_config}`; the "
            f"`{args.main_projection}` row is the main model (`{main_folder}`). The spread is over the probe's seeds "
            "(label subsets), not over pretraining runs; retrieval is deterministic.",
            "",
            ablation_table(projection_ablation, args.projections, task.name, headline_metric(task), by="projection",
                           labels={args.main_projection: f"{args.main_projection} (main model)"}),
            "",
        ]
    if args.probe_heads:
        lines += [
            "## Probe-head ablation (beyond the paper)",
            "",
            "The linear probe of ConVIRT's frozen features (the main model) with its logistic-regression head (the "
            "paper's protocol, Table 1a's ConVIRT row) and with a Tversky head (class prototypes over a learned feature "
            "bank, fitted by full-batch AdamW; see `convirt_hf.evaluation.linear_probe`); same label subsets and "
            "penalty choice on the validation split. The Tversky head's initialisation is drawn from each seed, so its "
            "spread at 100% is not 0.",
            "",
            format_probe_table(head_summary),
            "",
        ]
    lines += [
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
                "pretrained_projections": {kind: str(f) for kind, f in projection_folders.items()},
                "main_projection": args.main_projection, "chance_rate": chance, "runtime_seconds": round(elapsed, 1),
                "arguments": asdict(args), "ablation": ablation, "projection_ablation": projection_ablation,
                "embedding_maps": {k: str(v) for k, v in maps.items()}}
    write_results(output_dir / "results.json", metadata, results, summarise_runs(results), overwrite=True)
    print(text)
    return {"metadata": metadata, "results": results, "summary": probe_summary, "ablation": ablation,
            "projection_ablation": projection_ablation, "head_summary": head_summary,
            "retrieval": retrieval_by_model, "markdown": text}


def _train_runtime_seconds(folder: Path) -> float:
    """A finished run's pretraining time, from its metrics.json (0 where it records none)."""
    import json

    try:
        return float(json.loads((folder / "metrics.json").read_text()).get("train_runtime_seconds", 0.0))
    except (OSError, ValueError, TypeError):
        return 0.0


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def cli() -> None:
    run_cli(main, "convirt_hf.reproduce")


if __name__ == "__main__":
    cli()
