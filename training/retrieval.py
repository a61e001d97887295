#!/usr/bin/env python
"""The paper's zero-shot retrieval protocol: image->image and text->image Precision@k of ConVIRT models and baselines.

    python training/retrieval.py --models outputs/convirt-demo                       # the synthetic corpus's set
    python training/retrieval.py --models outputs/convirt-demo random:resnet18 resnet18.a1_in1k   # Table 2's rows
    python training/retrieval.py --models outputs/convirt-demo --zero_shot --embedding_map outputs/tsne.png
    python training/retrieval.py --models runs/convirt-mimic \\
        --chexpert_csv /data/CheXpert-v1.0/train.csv --chexpert_root /data \\
        --retrieval_set_output /data/chexpert-8x200 --output runs/chexpert_retrieval.json

--models takes the encoder specs the linear probe takes: ConVIRT folders (image->image and text->image), and for
image->image alone `random:<timm architecture>`, a timm name with a pretrained tag, a timm folder or a checkpoint file
(--architecture names its model). Image->image ranks by the backbone's pooled features (--features backbone, the
default: the same features for every encoder, as the random and ImageNet baselines have no projection head) or, for
ConVIRT models, by the projected joint-space embeddings (--features projection, what pretraining's own retrieval
metrics use). Text->image always ranks in the joint space.

Candidates are ranked by cosine similarity to each query (query images, or each category's text sentences);
Precision@k (k = 5, 10, 50, 100 by default) is reported per category and as the mean over queries. A k larger than a
category's number of candidates is "n/a" (null in the JSON): the category could not reach precision 1 there.

The retrieval set is a folder with retrieval_candidates / retrieval_queries splits and text_queries.json: by default
the synthetic corpus's (the same cached corpus as training/pretrain.py for the same --cache_dir, --synthetic_seed and
--synthetic_pretrain_size), or --retrieval_set, or one built first from CheXpert's CSVs with --chexpert_csv (the
paper's 8 x 200 layout, see convirt_hf.evaluation.chexpert; its text queries are this project's own sentences, as the
paper's are unpublished). --zero_shot also classifies the --zero_shot_split images by their similarity to the text
queries of each class (convirt_hf.evaluation.zero_shot). Results are written as JSON (rows with protocol "retrieval"
and "zero_shot") and printed as markdown tables.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from convirt_hf.cli import (
    argument_errors,
    check_device,
    check_existing_file,
    check_existing_folder,
    check_folder_path,
    check_output_file,
    check_synthetic_corpus_arguments,
    configure_logging,
    one_of,
    parse_arguments,
    positive,
    run_cli,
)
from convirt_hf.data.transforms import default_eval_resize
from convirt_hf.evaluation.chexpert import load_text_queries
from convirt_hf.evaluation.corpora import saved_splits
from convirt_hf.evaluation.encoders import check_image_encoder_spec
from convirt_hf.evaluation.image_retrieval import IMAGE_FEATURES
from convirt_hf.evaluation.retrieval import DEFAULT_KS, format_precision_table
from convirt_hf.evaluation.tasks import parse_task

logger = logging.getLogger("convirt_hf.retrieval")

DIRECTIONS = ("image->image", "text->image")
RETRIEVAL_SPLITS = ("retrieval_candidates", "retrieval_queries")
EMBEDDING_MAP_METHODS = ("tsne", "umap")


@dataclass
class RetrievalArguments:
    models: list[str] = field(
        default_factory=lambda: ["outputs/convirt-demo"],
        metadata={"help": "ConVIRT model folders (written by training/pretrain.py or save_pretrained), and image "
                  "encoders for image->image alone: random:<timm architecture>, a timm name with a pretrained tag, "
                  "a timm folder or a checkpoint file"},
    )
    features: str = field(
        default="backbone",
        metadata={"help": "image->image ranks by the backbone's pooled features (backbone: the same for every encoder) "
                  "or by a ConVIRT model's projected embeddings (projection)"},
    )
    architecture: str | None = field(default=None, metadata={"help": "timm architecture of checkpoint files"})
    image_size: int | None = field(
        default=None, metadata={"help": "input side of random/timm encoders (default: the first ConVIRT model's, else "
                                "the encoder's own)"})
    retrieval_set: str | None = field(
        default=None, metadata={"help": "a retrieval-set folder; default: the synthetic corpus's retrieval splits"})
    chexpert_csv: list[str] | None = field(
        default=None,
        metadata={"help": "CheXpert-v1.0 train.csv and/or valid.csv to sample the 8 x N set from, or one CSV listing "
                  "a set (columns Path, category, role = candidate/query); needs --retrieval_set_output"},
    )
    chexpert_root: str | None = field(
        default=None, metadata={"help": "the folder holding CheXpert-v1.0 (the CSV paths are relative to it); "
                                "default: the folder above the CSV's"})
    retrieval_set_output: str | None = field(
        default=None, metadata={"help": "where to write the retrieval set built from --chexpert_csv"})
    candidates_per_category: int = field(default=200, metadata={"help": "CheXpert: candidates per category"})
    queries_per_category: int = field(default=10, metadata={"help": "CheXpert: query images per category"})
    chexpert_seed: int = field(default=0, metadata={"help": "CheXpert: the sampling seed"})
    include_lateral: bool = field(default=False, metadata={"help": "CheXpert: also sample lateral views"})
    exclude_other_findings: bool = field(
        default=False, metadata={"help": "CheXpert: also leave out rows positive/uncertain on the 6 other pathologies"})
    text_queries: str | None = field(
        default=None, metadata={"help": "a JSON file (category -> sentences) replacing the set's text queries"})
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    zero_shot: bool = field(default=False, metadata={"help": "also run zero-shot classification by prompts"})
    zero_shot_dataset: str | None = field(
        default=None, metadata={"help": "the saved DatasetDict to classify; default: the retrieval set's folder (the "
                                "synthetic corpus by default)"})
    zero_shot_split: str = "cls_test"
    zero_shot_tasks: list[str] = field(
        default_factory=lambda: ["category", "findings", "pneumonia", "fracture"],
        metadata={"help": "synthetic presets or '[name=]kind:class,...[@patient]'"},
    )
    prompts: str | None = field(
        default=None, metadata={"help": "a JSON file (class -> prompt sentences); default: the set's text queries"})
    embedding_map: str | None = field(
        default=None, metadata={"help": "a PNG path for a t-SNE/UMAP map of the candidates' image embeddings "
                                "(one file per model, suffixed with the model's name, when several)"})
    embedding_map_methods: list[str] = field(default_factory=lambda: ["tsne", "umap"])
    seed: int = field(default=0, metadata={"help": "seed of the embedding map's layout"})
    batch_size: int = 64
    device: str | None = field(default=None, metadata={"help": "default: cuda when available, else cpu"})
    cache_dir: str = "~/.cache/convirt_hf"
    synthetic_seed: int = 0
    synthetic_pretrain_size: int = 3000
    output: str = "outputs/retrieval.json"
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output, --embedding_map or "
                                                     "--retrieval_set_output"})

    def __post_init__(self):
        # Every check runs here, before a CheXpert set is built, the synthetic corpus generated or a model loaded.
        positive("batch_size", self.batch_size)
        positive("candidates_per_category", self.candidates_per_category)
        positive("queries_per_category", self.queries_per_category)
        # numpy's generators (CheXpert sampling) and scikit-learn's random_state (the map's layout) refuse negatives
        positive("chexpert_seed", self.chexpert_seed, allow_zero=True)
        positive("seed", self.seed, allow_zero=True)
        if not self.models:
            raise ValueError("--models needs at least one model or image encoder")
        one_of("features", self.features, IMAGE_FEATURES)
        if self.image_size is not None:
            positive("image_size", self.image_size)
        if self.architecture is not None:
            import timm

            if not timm.is_model(self.architecture):
                raise ValueError(f"--architecture {self.architecture!r} is not a timm architecture")
        self.kinds = {}
        for model in self.models:
            with argument_errors("models"):
                self.kinds[model] = check_image_encoder_spec(model, self.architecture)
            if self.features == "projection" and self.kinds[model] != "convirt":
                raise ValueError(f"--features projection: {model} is a {self.kinds[model]} encoder without a "
                                 "projection head; use --features backbone to compare it")
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ValueError(f"--ks must be positive integers, got {self.ks}")
        self.ks = list(dict.fromkeys(int(k) for k in self.ks))
        if self.device is not None:
            check_device(self.device)
        check_synthetic_corpus_arguments(self.cache_dir, self.synthetic_seed, self.synthetic_pretrain_size,
                                         uses_synthetic_corpus=not self.chexpert_csv and self.retrieval_set is None)
        if self.chexpert_csv:
            if self.retrieval_set is not None:
                raise ValueError("--chexpert_csv builds the retrieval set: do not pass --retrieval_set too")
            if not self.retrieval_set_output:
                raise ValueError("--chexpert_csv needs --retrieval_set_output (where to write the set it builds)")
            for path in self.chexpert_csv:
                if not Path(path).expanduser().is_file():
                    raise ValueError(f"--chexpert_csv {path}: no such file")
            if self.chexpert_root is not None and not Path(self.chexpert_root).expanduser().is_dir():
                raise ValueError(f"--chexpert_root {self.chexpert_root}: no such folder")
            check_folder_path("retrieval_set_output", self.retrieval_set_output)
            output = Path(self.retrieval_set_output).expanduser()
            if output.is_dir() and any(output.iterdir()) and not self.overwrite:
                raise ValueError(f"--retrieval_set_output {self.retrieval_set_output} exists: pass --overwrite to "
                                 "replace it")
        else:
            # CheXpert's options would be ignored without a word: refuse them, as a typo'd command most likely means
            for name in ("chexpert_root", "retrieval_set_output", "include_lateral", "exclude_other_findings"):
                if getattr(self, name) not in (None, False):
                    raise ValueError(f"--{name} only applies with --chexpert_csv")
            if self.retrieval_set is not None:
                check_retrieval_set(self.retrieval_set)
        if self.text_queries is not None:
            check_existing_file("text_queries", self.text_queries)
            with argument_errors("text_queries"):
                load_text_queries(self.text_queries)
        self._check_zero_shot()
        unknown = [m for m in self.embedding_map_methods if m not in EMBEDDING_MAP_METHODS]
        if unknown or not self.embedding_map_methods:
            raise ValueError(f"--embedding_map_methods must be among tsne, umap, got {self.embedding_map_methods}")
        if self.embedding_map is not None:
            from convirt_hf.evaluation.embedding_map import _require_eval_extra

            _require_eval_extra()  # before any work: a clear ImportError naming the eval extra
            if not self.embedding_map.lower().endswith(".png"):
                raise ValueError(f"--embedding_map must be a .png path, got {self.embedding_map!r}")
            for path in embedding_map_paths(self.embedding_map, self.models).values():
                check_output_file("embedding_map", path, self.overwrite)
        check_output_file("output", self.output, self.overwrite)

    def _check_zero_shot(self) -> None:
        """The zero-shot options: the split to classify exists, and every class of every task has prompts."""
        self.parsed_tasks = []
        if not self.zero_shot:
            for name in ("zero_shot_dataset", "prompts"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name} only applies with --zero_shot")
            return
        if self.prompts is not None:
            check_existing_file("prompts", self.prompts)
            with argument_errors("prompts"):
                load_text_queries(self.prompts)
        if not self.zero_shot_tasks:
            raise ValueError("--zero_shot_tasks needs at least one task")
        with argument_errors("zero_shot_tasks"):
            self.parsed_tasks = [parse_task(spec) for spec in self.zero_shot_tasks]
        # The split names of what main() classifies, read without loading it (nor building or generating it).
        from convirt_hf.data.synthetic import SPLITS

        if self.zero_shot_dataset is not None:
            check_existing_folder("zero_shot_dataset", self.zero_shot_dataset)
            splits, where = saved_splits(self.zero_shot_dataset), self.zero_shot_dataset
            if splits is None:
                raise ValueError(f"--zero_shot_dataset {self.zero_shot_dataset} is not a saved DatasetDict (no "
                                 "dataset_dict.json)")
        elif self.chexpert_csv:
            splits, where = list(RETRIEVAL_SPLITS), "the CheXpert retrieval set"
        elif self.retrieval_set is not None:
            splits, where = saved_splits(self.retrieval_set), self.retrieval_set
        else:
            splits, where = list(SPLITS), "the synthetic corpus"
        if self.zero_shot_split not in splits:
            raise ValueError(f"--zero_shot_split {self.zero_shot_split!r} is not a split of {where} (splits: "
                             f"{splits}); pass --zero_shot_dataset with a labelled split")
        prompts = self._zero_shot_prompts()
        for task in self.parsed_tasks:
            missing = [name for name in task.classes if name not in prompts]
            if missing:
                raise ValueError(f"--zero_shot_tasks {task.name}: no prompts for {missing} "
                                 f"(prompt classes: {list(prompts)}); pass --prompts")

    def _zero_shot_prompts(self) -> dict:
        """The prompts main() will classify with: --prompts, else the retrieval set's text queries."""
        from convirt_hf.data.synthetic import TEXT_QUERIES
        from convirt_hf.evaluation.chexpert import CHEXPERT_TEXT_QUERIES

        if self.prompts is not None:
            return load_text_queries(self.prompts)
        if self.text_queries is not None:  # they replace the set's own
            return load_text_queries(self.text_queries)
        if self.chexpert_csv:
            return CHEXPERT_TEXT_QUERIES
        if self.retrieval_set is not None:
            return json.loads((Path(self.retrieval_set).expanduser() / "text_queries.json").read_text())
        return TEXT_QUERIES


def check_retrieval_set(folder: str) -> None:
    """What `load_retrieval_set` needs, checked without loading: the two retrieval splits and text_queries.json."""
    path = check_existing_folder("retrieval_set", folder)
    splits = saved_splits(path) or []
    missing = [split for split in RETRIEVAL_SPLITS if split not in splits]
    if not (path / "text_queries.json").is_file():
        missing.append("text_queries.json")
    if missing:
        raise ValueError(f"--retrieval_set {folder} is not a retrieval set (missing {missing}): it needs the splits "
                         f"{list(RETRIEVAL_SPLITS)} and a text_queries.json, as the synthetic corpus and "
                         "--chexpert_csv's sets have")


def embedding_map_paths(path: str, models: list[str]) -> dict[str, Path]:
    """The PNG of each model: `path` itself for one model, else `<stem>-<model folder name>.png` (index on clashes)."""
    base = Path(path).expanduser()
    if len(models) == 1:
        return {models[0]: base}
    names = [Path(model).expanduser().resolve().name or f"model{i}" for i, model in enumerate(models)]
    clash = len(set(names)) != len(names)
    return {model: base.with_name(f"{base.stem}-{f'{i}-' if clash else ''}{name}{base.suffix}")
            for i, (model, name) in enumerate(zip(models, names))}


def retrieval_rows(results: dict, model: str, data: str, ks, features: str = "backbone") -> list[dict]:
    """Result rows of one model: the mean Precision@k of each direction, then one row per category."""
    rows = []
    for direction, result in results.items():
        total_queries = sum(result["num_queries"].values())
        total_candidates = sum(result["num_candidates"].values())
        common = {"model": model, "data": data, "task": "retrieval", "protocol": "retrieval", "fraction": None,
                  "seed": None, "direction": direction,
                  "features": features if direction == "image->image" else "projection"}
        for k in ks:
            rows.append({**common, "metric": f"{direction}/P@{k}", "value": result["mean"][k], "k": k,
                         "category": "mean", "num_queries": total_queries, "num_candidates": total_candidates,
                         "headline": k == 10})
        for category, values in result["per_category"].items():
            for k in ks:
                rows.append({**common, "metric": f"{direction}/P@{k}/{category}", "value": values[k], "k": k,
                             "category": category, "num_queries": result["num_queries"][category],
                             "num_candidates": result["num_candidates"][category], "headline": False})
    return rows


def format_category_table(result: dict, ks) -> str:
    """A markdown table of one direction's Precision@k per category (x100; n/a where k exceeds its candidates)."""
    lines = ["| category | queries | candidates | " + " | ".join(f"P@{k}" for k in ks) + " |",
             "|" + "---|" * (len(ks) + 3)]
    for category, values in result["per_category"].items():
        cells = ["n/a" if values[k] is None else f"{100 * values[k]:.1f}" for k in ks]
        lines.append(f"| {category} | {result['num_queries'][category]} | {result['num_candidates'][category]} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _zero_shot_records(args: RetrievalArguments, retrieval_folder: Path):
    from datasets import load_from_disk

    folder = Path(args.zero_shot_dataset).expanduser() if args.zero_shot_dataset is not None else retrieval_folder
    corpus = load_from_disk(str(folder))
    if not hasattr(corpus, "keys") or args.zero_shot_split not in corpus:
        splits = list(corpus) if hasattr(corpus, "keys") else []
        raise ValueError(f"--zero_shot_split {args.zero_shot_split!r} is not a split of {folder} (splits: {splits}); "
                         "pass --zero_shot_dataset with a labelled split")
    return folder, corpus[args.zero_shot_split]


def load_retrieval(args: RetrievalArguments):
    """The retrieval set the arguments name (built from CheXpert's CSVs first when asked), and its folder."""
    from convirt_hf.evaluation.chexpert import build_chexpert_retrieval_set
    from convirt_hf.evaluation.corpora import corpus_folder
    from convirt_hf.evaluation.zero_shot import load_retrieval_set

    if args.chexpert_csv:
        folder = build_chexpert_retrieval_set(
            args.chexpert_csv, args.retrieval_set_output, root=args.chexpert_root,
            candidates_per_category=args.candidates_per_category, queries_per_category=args.queries_per_category,
            seed=args.chexpert_seed, frontal_only=not args.include_lateral,
            exclude_other_findings=args.exclude_other_findings, text_queries=args.text_queries,
            overwrite=args.overwrite)
    elif args.retrieval_set is not None:
        folder = Path(args.retrieval_set).expanduser()
    else:
        folder = corpus_folder(None, args.cache_dir, args.synthetic_seed, args.synthetic_pretrain_size)
    retrieval = load_retrieval_set(folder)
    if args.text_queries is not None and not args.chexpert_csv:  # a built set already holds them
        retrieval.text_queries = load_text_queries(args.text_queries, list(dict.fromkeys(retrieval.candidate_labels)))
    return folder, retrieval


def processor_view(model_dir: str | Path) -> tuple[int, int]:
    """The (crop, resize) evaluation view a ConVIRT folder's processor makes."""
    from convirt_hf import ConvirtConfig

    crop = int(ConvirtConfig.from_pretrained(Path(model_dir).expanduser()).image_size)
    processor_file = Path(model_dir).expanduser() / "processor_config.json"
    image_processor = json.loads(processor_file.read_text()).get("image_processor", {}) if processor_file.is_file() \
        else {}
    crop = int(image_processor.get("crop_size", {}).get("height", crop))
    return crop, int(image_processor.get("size", {}).get("shortest_edge", default_eval_resize(crop)))


def baseline_view(args: RetrievalArguments) -> tuple[int | None, int | None]:
    """The (crop, resize) of random/timm encoders: --image_size, else the first ConVIRT model's (same views for all)."""
    if args.image_size is not None:
        return args.image_size, None
    convirt = next((spec for spec in args.models if args.kinds[spec] == "convirt"), None)
    return processor_view(convirt) if convirt else (None, None)


def model_directions(spec: str, args: RetrievalArguments, retrieval, device, view):
    """Image->image by the chosen features (any encoder) and, for a ConVIRT model, text->image; with the candidates'
    image->image features (for the embedding map) and the ConVIRT model and processor (None for other encoders)."""
    from convirt_hf import ConvirtModel, ConvirtProcessor
    from convirt_hf.evaluation.image_retrieval import image_to_image, retrieval_encoder
    from convirt_hf.evaluation.zero_shot import evaluate_retrieval

    is_convirt = args.kinds[spec] == "convirt"
    image_size, resize = processor_view(spec) if is_convirt else view
    encoder = retrieval_encoder(spec, args.features, architecture=args.architecture, image_size=image_size)
    image_result, candidate_features = image_to_image(encoder, retrieval, args.ks, device=device,
                                                      batch_size=args.batch_size, resize=resize)
    directions, model, processor = {"image->image": image_result}, None, None
    if is_convirt:
        model_dir = Path(spec).expanduser()
        model = ConvirtModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        processor = ConvirtProcessor.from_pretrained(model_dir)
        directions.update(evaluate_retrieval(model, processor, retrieval, device=device, ks=args.ks,
                                             directions=("text->image",)))
    return directions, candidate_features, model, processor


def zero_shot_rows(spec: str, args: RetrievalArguments, model, processor, records, prompts, data: str,
                   device) -> list[dict]:
    from convirt_hf.evaluation.scoring import headline_metric
    from convirt_hf.evaluation.zero_shot import evaluate_zero_shot_classification

    scores = evaluate_zero_shot_classification(model, processor, records, args.parsed_tasks, prompts, device=device,
                                               batch_size=args.batch_size)
    rows, lines = [], ["| task | metric | value |", "|---|---|---|"]
    for task in args.parsed_tasks:
        for metric, value in scores[task.name].items():
            rows.append({"model": spec, "data": data, "task": task.name, "task_kind": task.kind,
                         "protocol": "zero_shot", "fraction": None, "seed": None, "metric": metric, "value": value,
                         "headline": metric == headline_metric(task)})
            lines.append(f"| {task.name} | {metric} | {'n/a' if value is None else f'{100 * value:.1f}'} |")
    print(f"\nzero-shot classification ({data}):\n\n" + "\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> dict:
    (args, _preset) = parse_arguments((RetrievalArguments,), argv, description=__doc__)
    configure_logging()
    from convirt_hf.evaluation.linear_probe import summarise_runs
    from convirt_hf.evaluation.reporting import write_results

    folder, retrieval = load_retrieval(args)
    zero_shot_folder = zero_shot_records = prompts = None
    if args.zero_shot:
        zero_shot_folder, zero_shot_records = _zero_shot_records(args, folder)
        prompts = load_text_queries(args.prompts) if args.prompts is not None else retrieval.text_queries
        for task in args.parsed_tasks:
            missing = [name for name in task.classes if name not in prompts]
            if missing:
                raise ValueError(f"--zero_shot_tasks {task.name}: no prompts for {missing} "
                                 f"(prompt classes: {list(prompts)}); pass --prompts")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    map_paths = embedding_map_paths(args.embedding_map, args.models) if args.embedding_map else {}
    view = baseline_view(args)
    results, tables, maps = [], {}, {}
    for spec in args.models:
        directions, candidate_features, model, processor = model_directions(spec, args, retrieval, device, view)
        results += retrieval_rows(directions, spec, str(folder), args.ks, args.features)
        tables[spec] = format_precision_table(directions, args.ks)
        print(f"\n## {spec} on {folder} (image->image by {args.features} features)\n\n{tables[spec]}")
        for direction, result in directions.items():
            print(f"\n{direction}, per category:\n\n{format_category_table(result, args.ks)}")
        if spec in map_paths:
            from convirt_hf.evaluation.embedding_map import plot_embedding_map

            drawn = plot_embedding_map(candidate_features, retrieval.candidate_labels, map_paths[spec],
                                       methods=args.embedding_map_methods, seed=args.seed,
                                       title=f"{Path(spec).name or spec}: retrieval candidates ({args.features})")
            maps[spec] = {"path": str(drawn.path), "methods": list(drawn.coordinates)}
        if args.zero_shot and model is not None:
            results += zero_shot_rows(spec, args, model, processor, zero_shot_records, prompts,
                                      f"{zero_shot_folder}:{args.zero_shot_split}", device)
        elif args.zero_shot:
            logger.info("%s: no text tower, no zero-shot classification", spec)
        del model

    summary = summarise_runs([row for row in results if row.get("category", "mean") == "mean"])
    metadata = results_metadata(args, folder, retrieval, zero_shot_folder, prompts, maps, view[0])
    write_results(args.output, metadata, results, summary, overwrite=args.overwrite)
    logger.info("results written to %s", args.output)
    return {"metadata": metadata, "results": results, "summary": summary, "tables": tables}


def results_metadata(args, folder, retrieval, zero_shot_folder, prompts, maps, image_size) -> dict:
    description_file = Path(folder) / "retrieval_set.json"
    return {
        "protocol": "retrieval",
        "retrieval_set": str(folder),
        "retrieval_set_info": json.loads(description_file.read_text()) if description_file.is_file() else None,
        "num_candidates": len(retrieval.candidates),
        "num_queries": len(retrieval.queries),
        "chance_rate": retrieval.chance_rate(),
        "ks": args.ks,
        "image_features": args.features,
        "baseline_image_size": image_size,
        "text_queries": retrieval.text_queries,
        "zero_shot": None if not args.zero_shot else {
            "dataset": str(zero_shot_folder), "split": args.zero_shot_split, "prompts": prompts,
            "tasks": [task.name for task in args.parsed_tasks],
            "scores": "multi-class: softmax over the task's classes; binary/multi-label: each class's softmax "
                      "probability among all prompt classes (AUC only)",
        },
        "embedding_maps": maps,
        "arguments": {key: value for key, value in asdict(args).items()},
    }


def cli() -> None:
    run_cli(main, "convirt_hf.retrieval")


if __name__ == "__main__":
    cli()
