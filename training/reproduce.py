#!/usr/bin/env python
"""The paper's evaluation in miniature, on the built-in synthetic corpus, in one command.

    python training/reproduce.py                                   # pretrains what it needs, then evaluates
    python training/reproduce.py --pretrained outputs/convirt-demo # reuses `make pretrain`'s model for tau = 0.1
    python training/reproduce.py --imagenet resnet18.a1_in1k       # adds an ImageNet baseline where weights exist

It pretrains ConVIRT on the synthetic corpus with the demo settings (`training/configs/demo.yaml`) once per
temperature of the ablation (tau = 0.01, 0.1, 1; tau = 0.1 is the paper's and the main model's) and once per projection
kind other than the main model's (`--projections`), each for every pretraining seed (`--pretrain_seeds`, three by
default, so that the ablations show the spread over pretraining runs), then prints and saves tables shaped like the
paper's:

- Table 1a: the linear probe at 1%, 10% and 100% of the labels, random initialisation vs ConVIRT (plus ImageNet when
  `--imagenet` names weights), on four tasks standing for the paper's four (see `convirt_hf.evaluation.tasks`);
- Table 2: zero-shot image->image retrieval Precision@5/10/50 of ConVIRT, random initialisation (and ImageNet), ranked
  by the image tower's pooled features, and ConVIRT's text->image retrieval;
- Table 4: the temperature ablation and the projection ablation (linear vs the paper's non-linear projection, plus a
  Tversky projection): the linear probe at 1%, image->image and text->image P@10, mean ± std over pretraining runs;
- the probe-head ablation (this project's addition: the logistic-regression probe vs a Tversky head on ConVIRT's
  frozen features, every task and label fraction);
- a t-SNE map of the retrieval candidates' image features, ConVIRT vs random initialisation.

The main model is the tau = 0.1 run of the first pretraining seed (or `--pretrained`). A folder that already holds a
finished run is reused only when the training signature it recorded (preset, every overridden setting, steps, seed,
tau, projection, the corpus) is the one the table needs; otherwise the command says why and trains it again with
`--overwrite`, or refuses without it (`--pretrained` is checked the same way). A second call thus only evaluates; it
needs `--overwrite` to replace the first call's results. Everything is written to `--output_dir` (`results.json`,
`results.md`, the maps); `--markdown` puts the tables elsewhere too (the project's docs/results.md is written this
way).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from convirt_hf.cli import (
    argument_errors,
    check_folder_path,
    check_output_file,
    check_seeds,
    check_synthetic_corpus_arguments,
    check_transfer_grid,
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
from convirt_hf.evaluation.image_retrieval import image_to_image, retrieval_encoder
from convirt_hf.evaluation.linear_probe import HEADS, probe_inputs, run_linear_probe, summarise_runs
from convirt_hf.evaluation.reporting import format_probe_table, write_results
from convirt_hf.evaluation.retrieval import format_precision_table
from convirt_hf.evaluation.tasks import parse_task
from convirt_hf.pretraining.plans import PlannedRun, ensure_run, is_finished_run, reuse_problem

logger = logging.getLogger("convirt_hf.reproduce")

MAIN_TAU = 0.1
RETRIEVAL_KS = (5, 10, 50)
# The results of a call, in --output_dir; a second call refuses to replace them without --overwrite.
RESULT_FILES = ("results.json", "results.md")
# The models whose t-SNE maps main() draws.
MAP_MODELS = ("ConVIRT", "random init")
# What reproduce.py passes to pretrain.py for each run it trains: an override of one of these would make it lose
# track of its own runs (or train them on another corpus than the one it evaluates on).
RESERVED_PRETRAIN_ARGUMENTS = ("config", "tau", "projection", "seed", "output_dir", "cache_dir", "synthetic_seed",
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
    pretrain_seeds: list[int] = field(default_factory=lambda: [42, 1, 2], metadata={
        "help": "pretraining seeds of every ablation run (the spread over pretraining runs); the first one's tau = 0.1 "
                "run is the main model (42: what `make pretrain` trains)"})
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
        check_seeds("pretrain_seeds", self.pretrain_seeds)
        if len(set(self.pretrain_seeds)) != len(self.pretrain_seeds):
            raise ValueError(f"--pretrain_seeds lists a seed twice: {self.pretrain_seeds}")
        if any(seed >= 2**32 for seed in self.pretrain_seeds):
            raise ValueError(f"--pretrain_seeds must be < 2**32, got {self.pretrain_seeds}")
        self.parsed_tasks = check_transfer_grid(self.fractions, self.tasks)
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
        self.runs = planned_runs(self)
        self._check_finished_runs()

    def _check_finished_runs(self) -> None:
        """A finished run that stands for another than the one planned for its folder: said before any work."""
        main = main_run_key(self)
        for key, run in self.runs.items():
            if not is_finished_run(run.folder):
                continue
            problems = reuse_problem(run.folder, run)
            if problems and key == main and self.pretrained is not None:
                raise ValueError(f"--pretrained {self.pretrained} was not trained as the tables' main run (preset "
                                 f"{self.pretrain_config}, tau {MAIN_TAU}, seed {self.pretrain_seeds[0]}): "
                                 + "; ".join(problems[:4]))
            if problems and not self.overwrite:
                raise ValueError(f"--output_dir {self.output_dir} holds {run.folder.name}, a finished run trained with "
                                 f"other settings ({'; '.join(problems[:4])}): pass --overwrite to train it again")

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
                         "each run it pretrains (use its own --pretrain_config, --taus, --projections, "
                         "--pretrain_seeds, "
                         "--output_dir, --cache_dir, --synthetic_seed and --synthetic_pretrain_size)")


def embedding_map_path(folder: Path, model_name: str) -> Path:
    return folder / f"tsne-{model_name.replace(' ', '-').replace('=', '')}.png"


def run_folder(args: ReproduceArguments, tau: float, projection: str | None, seed: int) -> Path:
    """Where the run of `tau` (with the preset's projection), or of `projection` at tau = 0.1, for `seed` goes."""
    if projection is None:
        return Path(args.output_dir) / f"convirt-tau{tau:g}-seed{seed}"
    return Path(args.output_dir) / f"convirt-projection-{projection}-seed{seed}"


def main_run_key(args: ReproduceArguments) -> tuple:
    return (MAIN_TAU, None, args.pretrain_seeds[0])


def planned_runs(args: ReproduceArguments) -> dict[tuple, PlannedRun]:
    """
    Every pretraining run of the tables, by (tau, projection or None for the preset's, seed). The projection
    ablation's main-model kind is the tau = 0.1 run itself; the main run is --pretrained when given.
    """
    runs = {}
    for seed in args.pretrain_seeds:
        for tau in args.taus:
            runs[(tau, None, seed)] = PlannedRun(run_folder(args, tau, None, seed), args.pretrain_config,
                                                 args.pretrain_overrides, {"tau": tau, "seed": seed})
        for kind in args.projections:
            if kind != args.main_projection:
                runs[(MAIN_TAU, kind, seed)] = PlannedRun(
                    run_folder(args, MAIN_TAU, kind, seed), args.pretrain_config, args.pretrain_overrides,
                    {"tau": MAIN_TAU, "projection": kind, "seed": seed})
    if args.pretrained is not None:
        runs[main_run_key(args)].folder = Path(args.pretrained)
    return runs


def pretrained_folders(args: ReproduceArguments) -> dict[tuple, Path]:
    """The finished folder of every planned run: reused, resumed or trained (see `ensure_run`)."""
    main = main_run_key(args)
    return {key: run.folder if key == main and args.pretrained is not None else ensure_run(run, args.overwrite)
            for key, run in args.runs.items()}


def convirt_retrieval(folder: Path, retrieval, device) -> tuple[dict, torch.Tensor]:
    """A ConVIRT run's image->image (backbone features) and text->image results, and its candidates' features."""
    from convirt_hf import ConvirtModel, ConvirtProcessor
    from convirt_hf.evaluation.zero_shot import evaluate_retrieval

    image_result, features = image_to_image(retrieval_encoder(str(folder)), retrieval, RETRIEVAL_KS, device=device)
    model = ConvirtModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    text = evaluate_retrieval(model, ConvirtProcessor.from_pretrained(folder), retrieval, device=device,
                              ks=RETRIEVAL_KS, directions=("text->image",))
    return {"image->image": image_result, **text}, features


def baseline_retrieval(spec: str, retrieval, device, image_size: int) -> tuple[dict, torch.Tensor]:
    """An encoder without a text tower (random init, ImageNet): image->image by its pooled features."""
    image_result, features = image_to_image(retrieval_encoder(spec, image_size=image_size), retrieval, RETRIEVAL_KS,
                                            device=device)
    return {"image->image": image_result}, features


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


def embedding_maps(features: dict, retrieval, output_dir: Path) -> dict[str, Path]:
    from convirt_hf.evaluation.embedding_map import plot_embedding_map

    paths = {}
    for name, candidate_features in features.items():
        path = embedding_map_path(output_dir, name)
        plot_embedding_map(candidate_features, retrieval.candidate_labels, path, methods=("tsne",), seed=0,
                           title=f"{name}: retrieval candidates (image tower features)")
        paths[name] = path
    return paths


def ablation_table(rows: list[dict], values: list, task_name: str, headline: str, by: str = "tau",
                   labels: dict | None = None) -> str:
    """
    The ablation over `values` of `by` ("tau" or "projection"): the 1% linear probe and the P@10 of both retrieval
    directions, each the mean ± std over pretraining runs; `labels` maps a value to its row's name.
    """
    labels = labels or {}
    lines = [f"| {by} | runs | linear probe 1% ({task_name} {headline}) | image->image P@10 | text->image P@10 |",
             "|---|---|---|---|---|"]
    for value in values:
        cells, runs = [], 0
        for kind in ("probe", "image->image", "text->image"):
            row = next((r for r in rows if r["kind"] == kind and r.get(by) == value), None)
            if row is None or row["mean"] is None:
                cells.append("n/a")
            else:
                runs = max(runs, row["runs"])
                cells.append(f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}")
        name = labels.get(value, value if by != "tau" else f"{value:g}")
        lines.append(f"| {name} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_rows(by: str, value, runs: list[tuple[list[dict], dict]], task, fraction: float) -> list[dict]:
    """
    The ablation's entries for one value over its pretraining runs (each: its probe rows and retrieval results):
    per metric the mean and standard deviation over the runs of each run's own value (its `fraction` linear probe
    averaged over probe seeds; its P@10).
    """
    from convirt_hf.evaluation.scoring import headline_metric

    per_kind: dict[str, list[float]] = {"probe": [], "image->image": [], "text->image": []}
    for probe_rows, directions in runs:
        summary = [s for s in summarise_runs(linear_head(probe_rows))
                   if s["task"] == task.name and s["fraction"] == fraction and s["metric"] == headline_metric(task)]
        if summary:
            per_kind["probe"].append(summary[0]["mean"])
        for direction, result in directions.items():
            if result["mean"][10] is not None:
                per_kind[direction].append(result["mean"][10])
    return [{"kind": kind, by: value, "mean": float(np.mean(values)) if values else None,
             "std": float(np.std(values)) if values else None, "runs": len(values)}
            for kind, values in per_kind.items()]


def retrieval_rows(name: str, results: dict, tau: float | None = None) -> list[dict]:
    rows = []
    for direction, result in results.items():
        for k, value in result["mean"].items():
            rows.append({"model": name, "data": "synthetic", "task": "retrieval", "protocol": "retrieval",
                         "fraction": None, "seed": None, "metric": f"{direction}/P@{k}", "value": value,
                         "headline": k == 10, "tau": tau})
    return rows


@dataclass
class Evaluation:
    """What the tables are computed from, shared by the phases of `main`."""

    args: ReproduceArguments
    records: dict
    retrieval: object
    device: torch.device
    results: list = field(default_factory=list)
    evaluated: dict = field(default_factory=dict)  # run folder -> (ablation task's probe rows, retrieval results)

    def ablation_run(self, folder: Path, name: str, tau: float) -> tuple[list[dict], dict]:
        """The ablation task's probe rows and the retrieval results of one run (each run evaluated once)."""
        task = self.args.parsed_ablation_task
        known = self.evaluated.get(folder)
        if known is None or not known[0]:  # the main run lacks the probe rows if the task is not in --tasks
            probe_rows = probe(str(folder), name, self.records, [task], self.args, self.device)
            directions = known[1] if known else convirt_retrieval(folder, self.retrieval, self.device)[0]
            self.results += probe_rows + ([] if known else retrieval_rows(name, directions, tau))
            self.evaluated[folder] = (probe_rows, directions)
        return self.evaluated[folder]


def linear_probe_table(evaluation: Evaluation, main_folder: Path, architecture: str, image_size: int):
    """Table 1a: ConVIRT against its baselines (and ConVIRT's probe with the head ablation's heads)."""
    args, records, device = evaluation.args, evaluation.records, evaluation.device
    heads = tuple(dict.fromkeys(("linear", *args.probe_heads)))
    evaluation.results += probe(str(main_folder), "ConVIRT", records, args.parsed_tasks, args, device, heads=heads)
    # the baselines see the images at the resolution ConVIRT was trained at
    evaluation.results += probe(f"random:{architecture}", "random init", records, args.parsed_tasks, args, device,
                                image_size)
    if args.imagenet is not None:
        evaluation.results += probe(args.imagenet, "ImageNet init", records, args.parsed_tasks, args, device,
                                    image_size)
    summaries = summarise_runs(evaluation.results)
    head_summary = [row for row in summaries if row["model"] == "ConVIRT" and row.get("head") in args.probe_heads]
    return linear_head(summaries), head_summary


def retrieval_table(evaluation: Evaluation, main_folder: Path, architecture: str, image_size: int):
    """Table 2: image->image by every encoder's pooled features, text->image by ConVIRT; and their features."""
    retrieval, device = evaluation.retrieval, evaluation.device
    by_model, features = {}, {}
    by_model["ConVIRT"], features["ConVIRT"] = convirt_retrieval(main_folder, retrieval, device)
    by_model["random init"], features["random init"] = baseline_retrieval(f"random:{architecture}", retrieval,
                                                                          device, image_size)
    if evaluation.args.imagenet is not None:
        by_model["ImageNet init"], _ = baseline_retrieval(evaluation.args.imagenet, retrieval, device, image_size)
    for name, directions in by_model.items():
        evaluation.results += retrieval_rows(name, directions, MAIN_TAU if name == "ConVIRT" else None)
    task = evaluation.args.parsed_ablation_task
    evaluation.evaluated[main_folder] = (
        [r for r in linear_head(evaluation.results) if r["model"] == "ConVIRT" and r["task"] == task.name],
        by_model["ConVIRT"])
    return by_model, features


def ablation_tables(evaluation: Evaluation, folders: dict) -> tuple[list[dict], list[dict]]:
    """Table 4: the temperature and projection ablations, each value over its pretraining runs."""
    args = evaluation.args
    task, fraction = args.parsed_ablation_task, min(args.fractions)
    ablation, projection_ablation = [], []
    for tau in args.taus:
        runs = [evaluation.ablation_run(folders[(tau, None, seed)], f"ConVIRT tau={tau:g} seed={seed}", tau)
                for seed in args.pretrain_seeds]
        ablation += ablation_rows("tau", tau, runs, task, fraction)
    for kind in args.projections:
        projection = None if kind == args.main_projection else kind
        runs = [evaluation.ablation_run(folders[(MAIN_TAU, projection, seed)],
                                        f"ConVIRT projection={kind} seed={seed}", MAIN_TAU)
                for seed in args.pretrain_seeds]
        projection_ablation += ablation_rows("projection", kind, runs, task, fraction)
    return ablation, projection_ablation


def main(argv: list[str] | None = None) -> dict:
    (args, _preset) = parse_arguments((ReproduceArguments,), argv, description=__doc__)
    configure_logging()
    from convirt_hf import ConvirtModel
    from convirt_hf.evaluation.zero_shot import load_retrieval_set

    started = time.time()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reused = {key for key, run in args.runs.items() if is_finished_run(run.folder)}
    folders = pretrained_folders(args)
    main_folder = folders[main_run_key(args)]
    corpus = corpus_folder(None, args.cache_dir, args.synthetic_seed, args.synthetic_pretrain_size)
    evaluation = Evaluation(args, classification_splits(corpus), load_retrieval_set(corpus), device)
    main_config = ConvirtModel.config_class.from_pretrained(main_folder)
    architecture, image_size = main_config.image_model_name, main_config.image_size

    probe_summary, head_summary = linear_probe_table(evaluation, main_folder, architecture, image_size)
    retrieval_by_model, features = retrieval_table(evaluation, main_folder, architecture, image_size)
    maps_dir = Path(args.maps_dir) if args.maps_dir else output_dir
    maps_dir.mkdir(parents=True, exist_ok=True)
    maps = embedding_maps(features, evaluation.retrieval, maps_dir)
    ablation, projection_ablation = ablation_tables(evaluation, folders)

    elapsed = time.time() - started
    report = {"probe_summary": probe_summary, "retrieval": retrieval_by_model, "ablation": ablation,
              "projection_ablation": projection_ablation, "head_summary": head_summary, "maps": maps,
              "main_folder": main_folder, "runs": len(folders), "reused": len(reused), "elapsed": elapsed,
              "pretraining_minutes": sum(_train_runtime_seconds(f) for f in set(folders.values())) / 60,
              "command": "python training/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    text = markdown_report(args, report, evaluation.retrieval, device, output_dir)
    (output_dir / "results.md").write_text(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    metadata = {"protocol": "reproduce", "corpus": str(corpus),
                "pretrained": {"/".join(str(part) for part in key): str(folder) for key, folder in folders.items()},
                "main_model": str(main_folder), "pretrain_seeds": args.pretrain_seeds,
                "main_projection": args.main_projection, "chance_rate": evaluation.retrieval.chance_rate(),
                "runtime_seconds": round(elapsed, 1), "arguments": asdict(args), "ablation": ablation,
                "projection_ablation": projection_ablation, "embedding_maps": {k: str(v) for k, v in maps.items()}}
    write_results(output_dir / "results.json", metadata, evaluation.results, summarise_runs(evaluation.results),
                  overwrite=True)
    print(text)
    return {"metadata": metadata, "results": evaluation.results, "summary": probe_summary, "ablation": ablation,
            "projection_ablation": projection_ablation, "head_summary": head_summary,
            "retrieval": retrieval_by_model, "markdown": text}


def markdown_report(args: ReproduceArguments, report: dict, retrieval, device, output_dir: Path) -> str:
    """results.md: the tables, each with the spread it shows."""
    lines = [
        "# ConVIRT in miniature: the paper's tables on the synthetic corpus",
        "",
        f"Produced by `{report['command'].strip()}` in {report['elapsed'] / 60:.1f} minutes on {platform.machine()} "
        f"({os.cpu_count()}-core CPU, {torch.get_num_threads()} threads, "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'no GPU'}), torch {torch.__version__}. "
        f"Pretraining: preset `{args.pretrain_config}`"
        f"{' with `' + args.pretrain_overrides + '`' if args.pretrain_overrides else ''}, {report['runs']} run(s), "
        f"{report['runs'] - report['reused']} pretrained by this call and {report['reused']} reused from earlier ones "
        f"({report['pretraining_minutes']:.1f} minutes of pretraining in all, by their metrics.json); main model "
        f"(tau 0.1, seed {args.pretrain_seeds[0]}) `{report['main_folder']}`"
        f"{' (reused: `--pretrained`, e.g. what `make pretrain` wrote)' if args.pretrained else ''}. Numbers are x100.",
        "",
        "## Linear probe (the paper's Table 1a)",
        "",
        "Tasks: `findings` (7 findings, multi-label, mean AUC; stands for CheXpert), `category` (8 classes, accuracy; "
        "COVIDx), `pneumonia` (binary AUC; RSNA), `fracture` (binary AUC; MURA, scored per image: the synthetic corpus "
        "has no per-patient labels). The probe is this project's protocol: L-BFGS logistic regression on frozen "
        "features with the penalty chosen on the validation split (the paper trains a linear layer with Adam). Mean "
        f"± std over probe seeds {args.seeds} (the label subsets differ per seed; at 100% they are the same, so the "
        "spread is 0), one pretrained model.",
        "",
        format_probe_table(report["probe_summary"]),
        "",
        "## Zero-shot retrieval (the paper's Table 2)",
        "",
        f"Precision@k over the retrieval set ({len(retrieval.candidates)} candidates, {len(retrieval.queries)} image "
        f"queries, {sum(len(v) for v in retrieval.text_queries.values())} text queries); chance is "
        f"{100 * retrieval.chance_rate():.1f}. Image->image ranks by each encoder's pooled image features (the same "
        "features for every row: the baselines have no projection head); text->image ranks in ConVIRT's joint space. "
        "One pretrained model; retrieval is deterministic.",
        "",
    ]
    for name, directions in report["retrieval"].items():
        lines += [f"**{name}**", "", format_precision_table(directions, RETRIEVAL_KS), ""]
    lines += ablation_sections(args, report)
    lines += ["## Image features (t-SNE)", ""]
    markdown_dir = Path(args.markdown).parent if args.markdown else output_dir
    for name, path in report["maps"].items():
        lines.append(f"![{name}]({Path(_relative(path, markdown_dir)).as_posix()})")
    return "\n".join(lines) + "\n"


def ablation_sections(args: ReproduceArguments, report: dict) -> list[str]:
    """results.md's temperature, projection and probe-head ablations."""
    from convirt_hf.evaluation.scoring import headline_metric

    task = args.parsed_ablation_task
    spread_over_runs = (f"mean ± std over {len(args.pretrain_seeds)} pretraining run(s) (seeds {args.pretrain_seeds}); "
                        f"each run's probe value is its mean over probe seeds {args.seeds}")
    lines: list[str] = []
    lines += [
        "## Temperature ablation (the paper's Table 4)",
        "",
        f"Each row: {spread_over_runs}.",
        "",
        ablation_table(report["ablation"], args.taus, task.name, headline_metric(task),
                       labels={MAIN_TAU: f"{MAIN_TAU:g} (paper default)"}),
        "",
    ]
    if args.projections:
        lines += [
            "## Projection ablation (the paper's Table 4: linear vs non-linear projection)",
            "",
            "The projections g_v and g_u: `mlp` (the paper's: one hidden layer and a ReLU), `linear` (the paper's "
            "ablation), and `tversky` (this project's addition: a Tversky projection layer, Doumbouya et al. 2025, the "
            f"similarities of h to learned prototypes over a learned feature bank). Tau = {MAIN_TAU:g}, preset "
            f"`{args.pretrain_config}`; the `{args.main_projection}` row is the temperature ablation's tau = "
            f"{MAIN_TAU:g} runs. Each row: {spread_over_runs}.",
            "",
            ablation_table(report["projection_ablation"], args.projections, task.name, headline_metric(task),
                           by="projection", labels={args.main_projection: f"{args.main_projection} (main model)"}),
            "",
        ]
    if args.probe_heads:
        lines += [
            "## Probe-head ablation (this project's addition)",
            "",
            "The linear probe of ConVIRT's frozen features (the main model) with its logistic-regression head (this "
            "project's probe protocol, Table 1a's ConVIRT row) and with a Tversky head (class prototypes over a "
            "learned feature bank, fitted by full-batch AdamW; see `convirt_hf.evaluation.linear_probe`); same label "
            "subsets and penalty choice on the validation split. The Tversky head's initialisation is drawn from each "
            "seed, so its spread at 100% is not 0.",
            "",
            format_probe_table(report["head_summary"]),
            "",
        ]
    return lines


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
