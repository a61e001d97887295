"""`python -m convirt_hf.demo`: the demo page for a ConVIRT model, served on 127.0.0.1.

    python -m convirt_hf.demo --model outputs/convirt-demo
    python -m convirt_hf.demo --model my-org/convirt-demo --gallery /data/cxr-pngs
    python -m convirt_hf.demo --model outputs/convirt-demo --gallery /data/mimic-shards --gallery_split test

Every argument is checked before the model is loaded or the server starts; a bad one ends the command with one line
that names its flag. The gallery's embeddings are computed once (with a progress bar) and cached under --cache_dir.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from convirt_hf.cli import (
    argument_errors,
    check_device,
    check_existing_folder,
    check_folder_path,
    parse_arguments,
    positive,
    run_cli,
)

from .engine import DEFAULT_TOP_K, MAX_TOP_K
from .gallery import DEFAULT_CACHE_DIR, DEFAULT_SPLIT, FolderGallery, is_saved_dataset
from .inputs import DEFAULT_MAX_MEGAPIXELS, IMAGE_SUFFIXES
from .model import DEFAULT_MODEL_DIR, HOW_TO_MAKE_ONE, check_model_folder, looks_like_path

logger = logging.getLogger("convirt_hf.demo")

# A host name or an IPv4/IPv6 address to listen on (not a URL).
HOST_PATTERN = re.compile(r"^[A-Za-z0-9.:\-\[\]]+$")


@dataclass
class DemoArguments:
    model: str | None = field(default=None, metadata={
        "help": f"a ConVIRT folder or Hub repo id (default: {DEFAULT_MODEL_DIR} when it exists)"})
    gallery: str | None = field(default=None, metadata={
        "help": "a folder of images, or a corpus saved with datasets.save_to_disk (default: the synthetic corpus's "
                "retrieval set)"})
    gallery_split: str | None = field(default=None, metadata={
        "help": f"the split of a saved corpus given as --gallery (default {DEFAULT_SPLIT})"})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "where the gallery embeddings are cached"})
    host: str = field(default="127.0.0.1", metadata={"help": "the address to listen on (0.0.0.0: every interface)"})
    port: int | None = field(default=None, metadata={"help": "the port (default: 7860, or the next free one)"})
    share: bool = field(default=False, metadata={"help": "also open a public gradio.live link (off by default)"})
    top_k: int = field(default=DEFAULT_TOP_K,
                       metadata={"help": f"images a search shows at first (at most {MAX_TOP_K})"})
    max_upload_mb: float = field(default=20.0, metadata={"help": "the largest upload accepted, in MB"})
    max_image_megapixels: float = field(default=DEFAULT_MAX_MEGAPIXELS,
                                        metadata={"help": "the largest image decoded, in megapixels"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass while indexing the gallery"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:<index> or mps (default: cuda if "
                                                               "available)"})

    def __post_init__(self):
        self._check_model()
        self._check_gallery()
        check_folder_path("cache_dir", self.cache_dir)
        if not HOST_PATTERN.match(self.host or ""):
            raise ValueError(f"--host {self.host!r} is not an address to listen on: give a host name or an IP "
                             "address such as 127.0.0.1 (not a URL)")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        positive("top_k", self.top_k)
        if self.top_k > MAX_TOP_K:
            raise ValueError(f"--top_k must be at most {MAX_TOP_K}, got {self.top_k}")
        positive("max_upload_mb", self.max_upload_mb)
        positive("max_image_megapixels", self.max_image_megapixels)
        positive("batch_size", self.batch_size)
        if self.device is not None:
            check_device(self.device)

    def _check_model(self) -> None:
        if self.model is None:
            if not Path(DEFAULT_MODEL_DIR).is_dir():
                raise FileNotFoundError(f"--model: no model given and {DEFAULT_MODEL_DIR} does not exist; "
                                        f"{HOW_TO_MAKE_ONE}")
            self.model = DEFAULT_MODEL_DIR
        path = Path(self.model).expanduser()
        if path.exists() or looks_like_path(self.model):
            check_existing_folder("model", self.model)
            with argument_errors("model"):
                check_model_folder(path)
            return
        from convirt_hf.hub import check_repo_id

        with argument_errors("model"):
            try:
                check_repo_id(self.model)
            except ValueError as error:
                raise ValueError(f"{self.model!r} is neither a folder nor a Hub repo id ({error})") from None

    def _check_gallery(self) -> None:
        if self.gallery is None:
            if self.gallery_split is not None:
                raise ValueError("--gallery_split only applies with --gallery (a saved corpus)")
            return
        folder = check_existing_folder("gallery", self.gallery)
        if is_saved_dataset(folder):
            from convirt_hf.evaluation.corpora import saved_splits

            splits = saved_splits(folder)
            split = self.gallery_split or DEFAULT_SPLIT
            if splits is not None and split not in splits:
                raise ValueError(f"--gallery_split {split!r} is not a split of {self.gallery} (splits: {splits})")
            return
        if self.gallery_split is not None:
            raise ValueError(f"--gallery_split only applies when --gallery is a saved corpus; {self.gallery} is a "
                             "folder of images")
        if not len(FolderGallery(folder)):
            raise ValueError(f"--gallery {self.gallery} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")


def serve(args: DemoArguments, block: bool = True):
    """Loads the model and the gallery, builds the page and serves it; returns the [`DemoApp`]."""
    from .app import create_demo

    app = create_demo(args.model, gallery=args.gallery, gallery_split=args.gallery_split, cache_dir=args.cache_dir,
                      device=args.device, top_k=args.top_k, batch_size=args.batch_size,
                      max_upload_mb=args.max_upload_mb, max_megapixels=args.max_image_megapixels, strict=True)
    if args.share:
        logger.warning("--share: the page is also reachable by anyone with its gradio.live link")
    app.launch(host=args.host, port=args.port, share=args.share, block=block)
    return app


def main(argv: list[str] | None = None, block: bool = True):
    """Runs the command on `argv`; with `block=False` returns the running [`DemoApp`] (tests close it)."""
    (args, _preset) = parse_arguments((DemoArguments,), argv, description=__doc__)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return serve(args, block=block)


def cli() -> None:
    run_cli(main, "convirt_hf.demo")
