"""The command line: ``python -m convirt_hf.data.synthetic --output /tmp/synthetic --grid /tmp/synthetic_grid.png``."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path

from .config import SyntheticCorpusConfig
from .corpus import generate_synthetic_corpus
from .render import save_sample_grid


def _parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, value = item.rpartition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"expected CATEGORY=WEIGHT, got {item!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"weight of {name.strip()!r} is not a number: {value!r}") from error
    return weights


def main(argv: list[str] | None = None) -> None:
    # prog: run as a package, argparse would call the program "__main__.py"
    parser = argparse.ArgumentParser(prog="python -m convirt_hf.data.synthetic",
                                     description="Generate the convirt-hf synthetic chest radiograph corpus.")
    parser.add_argument("--output", help="folder to write the corpus into (must not exist or be empty)")
    parser.add_argument("--grid", help="also write a sample grid PNG (one image per category) here")
    parser.add_argument("--grid-size", type=int, default=256, help="tile size of the sample grid")
    parser.add_argument("--num-workers", type=int, default=None, help="processes (default: one per core)")
    defaults = SyntheticCorpusConfig()
    for name, value in asdict(defaults).items():
        if name == "category_weights":
            parser.add_argument("--category-weights", type=_parse_weights, default={},
                                help='relative weights, e.g. "no finding=3,cardiomegaly=2" (others: 1)')
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.grid and not args.output:
        parser.error("nothing to do: pass --output and/or --grid")
    if args.output and Path(args.output).exists() and any(Path(args.output).iterdir()):
        parser.error(f"--output {args.output} exists and is not empty; choose a new folder")
    try:
        config = SyntheticCorpusConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    except ValueError as error:
        parser.error(str(error))
    if args.grid:
        print(f"wrote {save_sample_grid(args.grid, seed=args.seed, size=args.grid_size)}")
    if args.output:
        started = time.perf_counter()
        generate_synthetic_corpus(args.output, config, num_workers=args.num_workers)
        sizes = ", ".join(f"{split}={count}" for split, count in config.split_sizes().items())
        print(f"wrote {args.output} ({sizes}) in {time.perf_counter() - started:.1f} s")
