"""The Gradio page: three tabs over a [`DemoEngine`], and the server that shows it.

`create_demo` loads the model and the gallery and builds the page; `DemoApp.launch` serves it on 127.0.0.1 unless
told otherwise. Every request's failure reaches the page as a short message (a Gradio error toast), never as a
traceback: a refused input says what to do, and anything unexpected is logged on the server with its traceback
and reported to the page in one sentence. This module is the only one that imports gradio.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Before gradio is imported: no version check and no telemetry leave the machine (the page itself fetches nothing).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:
    import gradio as gr
except ImportError as error:  # gradio is an optional extra
    raise ImportError("The demo page needs gradio: pip install 'convirt-hf[demo]'") from error

from .engine import DEFAULT_QUERY, DEFAULT_SENTENCES, DEFAULT_TOP_K, MAX_TOP_K, DemoEngine, match_rows
from .gallery import DEFAULT_CACHE_DIR, build_gallery_index, default_gallery, open_gallery
from .inputs import ACCEPTED_FORMATS, DEFAULT_MAX_MEGAPIXELS, InputError, read_image, thumbnail
from .model import MEDICAL_DEVICE_LINE, ModelLoadError, load_demo_model

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 20.0
EXAMPLES = 4
TITLE = "ConVIRT demo"


def guarded(action: str):
    """Turns a refused input into its message and any other failure into one sentence, both shown in the page."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args):
            try:
                return function(*args)
            except InputError as error:
                raise gr.Error(str(error), title="Cannot use this input", print_exception=False) from None
            except Exception:
                logger.exception("the demo failed while %s", action)
                raise gr.Error(f"Something went wrong while {action}; the details are in the server's log.",
                               print_exception=False) from None
        return wrapper
    return decorate


# ------------------------------------------------------------------------------------------------------ the page


def _header(engine: DemoEngine, spec: str) -> None:
    model = engine.demo_model
    details = " · ".join(f"{name} {value}" for name, value in model.details.items())
    gr.Markdown(f"# {TITLE}: {model.title}\n\n{model.summary}\n\n{MEDICAL_DEVICE_LINE}", elem_id="model-summary")
    gr.Markdown(f"**Model**: `{spec}` ({details}). {engine.gallery.status()}", elem_id="gallery-status")


def _upload(prefix: str, engine: DemoEngine, examples: Sequence[tuple[str, str]]):
    """A file upload (any format the processor reads, DICOM included) with a preview of what the model sees."""
    upload = gr.File(label=f"Radiograph ({ACCEPTED_FORMATS})", type="filepath", elem_id=f"{prefix}-upload",
                     height=120)
    # no "share" button: it would post the radiograph to a Hugging Face discussion
    preview = gr.Image(label="What the model sees", interactive=False, elem_id=f"{prefix}-preview", height=256,
                       buttons=["download", "fullscreen"])
    if examples:
        gr.Examples([[path] for path, _ in examples], inputs=[upload], example_labels=[label for _, label in examples],
                    label="Examples from the gallery")
    upload.change(guarded("reading the image")(engine.preview), upload, preview, api_visibility="private")
    return upload


def _classify_tab(engine: DemoEngine, examples) -> None:
    @guarded("classifying the image")
    def classify(image, sentences):
        result = engine.classify(image, sentences)
        return result.label(), result.rows()

    with gr.Row():
        with gr.Column():
            upload = _upload("classify", engine, examples)
        with gr.Column():
            sentences = gr.Textbox("\n".join(DEFAULT_SENTENCES), lines=6, max_lines=24, elem_id="classify-sentences",
                                   label="Candidate sentences, one per line")
            button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            label = gr.Label(label=f"Probability: softmax(similarity / tau), tau = {engine.demo_model.tau:g}",
                             elem_id="classify-probabilities")
            table = gr.Dataframe(headers=["sentence", "cosine similarity", "similarity / tau", "probability"],
                                 interactive=False, wrap=True, elem_id="classify-table")
    button.click(classify, [upload, sentences], [label, table], api_name="classify")


def _results(prefix: str, engine: DemoEngine):
    slider = gr.Slider(1, min(MAX_TOP_K, len(engine.gallery)), value=min(engine.top_k, len(engine.gallery)), step=1,
                       label="Images to show", elem_id=f"{prefix}-k")
    button = gr.Button("Search", variant="primary", elem_id=f"{prefix}-button")
    gallery = gr.Gallery(label="Nearest gallery images (cosine similarity · caption)", columns=5, height="auto",
                         object_fit="contain", buttons=["download", "fullscreen"], elem_id=f"{prefix}-gallery")
    table = gr.Dataframe(headers=["rank", "image", "caption", "cosine similarity"], interactive=False,
                         elem_id=f"{prefix}-table")
    return slider, button, gallery, table


def _search_tabs(engine: DemoEngine, examples) -> None:
    @guarded("searching the gallery")
    def text_to_image(text, k):
        matches = engine.text_to_image(text, k)
        return engine.pictures(matches), match_rows(matches)

    @guarded("searching the gallery")
    def image_to_image(image, k):
        matches = engine.image_to_image(image, k)
        return engine.pictures(matches), match_rows(matches)

    with gr.Tab("Text to image", id="text-to-image"):
        query = gr.Textbox(DEFAULT_QUERY, label="A sentence of a report", elem_id="t2i-query")
        slider, button, gallery, table = _results("t2i", engine)
        for trigger in (button.click, query.submit):
            trigger(text_to_image, [query, slider], [gallery, table], api_name="text_to_image",
                    api_visibility="public" if trigger == button.click else "private")
    with gr.Tab("Image to image", id="image-to-image"):
        with gr.Row():
            with gr.Column():
                upload = _upload("i2i", engine, examples)
            with gr.Column():
                slider, button, gallery, table = _results("i2i", engine)
        button.click(image_to_image, [upload, slider], [gallery, table], api_name="image_to_image")


def build_blocks(engine: DemoEngine, spec: str, examples: Sequence[tuple[str, str]] = ()) -> gr.Blocks:
    """The page: a header with the model card's summary and the gallery's status, then the three tabs."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        _header(engine, spec)
        with gr.Tabs():
            with gr.Tab("Zero-shot classification", id="classify"):
                _classify_tab(engine, examples)
            _search_tabs(engine, examples)
    return blocks


def error_blocks(message: str) -> gr.Blocks:
    """A page that only says why the demo cannot run (e.g. the model is not ConVIRT), so a Space explains itself."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\n\n**The demo cannot start**: {message}\n\n{MEDICAL_DEVICE_LINE}", elem_id="load-error")
    return blocks


# ------------------------------------------------------------------------------------------------- the server


def write_examples(index, folder: Path, count: int = EXAMPLES) -> list[tuple[str, str]]:
    """
    A few gallery images as PNG files for the examples (`(path, label)`), one per group where the gallery has
    groups (a corpus's categories, or file names such as `edema-0002.png`), so the examples differ.
    """
    chosen, groups = [], set()
    for row in range(len(index)):
        group = re.sub(r"[-_ ]*\d+$", "", Path(index.caption(row)).stem)
        if group not in groups:
            groups.add(group)
            chosen.append((row, group))
        if len(chosen) == count:
            break
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for row, group in chosen:
        path = folder / f"example-{row:05d}.png"
        if not path.is_file():
            thumbnail(read_image(index.source.raw(index.positions[row]), index.max_megapixels), 512).save(path)
        examples.append((str(path), group))
    return examples


@dataclass
class DemoApp:
    """A built page and what serving it needs; `launch` starts the server."""

    blocks: gr.Blocks
    engine: DemoEngine | None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    allowed_paths: list[str] = field(default_factory=list)
    url: str | None = None

    def launch(self, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True,
               quiet: bool = False) -> str:
        """Serves the page on `host:port` (a free port from 7860 on by default); returns its local URL."""
        self.blocks.queue(default_concurrency_limit=1)
        _, self.url, _ = self.blocks.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=quiet,
            max_file_size=int(self.max_upload_mb * 1024 * 1024), allowed_paths=self.allowed_paths, show_error=False,
            # uploaded radiographs are not kept in the browser's run history
            run_history=False,
        )
        if block:
            self.blocks.block_thread()
        return self.url

    def close(self) -> None:
        self.blocks.close()


def create_demo(model: str | os.PathLike, *, gallery: str | os.PathLike | None = None, gallery_split: str | None = None,
                cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, device: str | None = None,
                top_k: int = DEFAULT_TOP_K, batch_size: int = 32, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, progress: bool = True,
                strict: bool = False) -> DemoApp:
    r"""
    Loads a ConVIRT model and a gallery and builds the demo page.

    Args:
        model (`str` or `os.PathLike`): a ConVIRT folder or a Hub repo id.
        gallery (`str` or `os.PathLike`, *optional*): a folder of images or a saved corpus; default the synthetic
            corpus's retrieval set.
        gallery_split (`str`, *optional*): the corpus split (default retrieval_candidates).
        cache_dir: where the gallery embeddings (and the example images) are cached.
        device (`str`, *optional*): default cuda when available, else cpu.
        top_k (`int`): images a search shows at first.
        batch_size (`int`): images per forward pass while indexing the gallery.
        max_upload_mb (`float`): the upload size cap, enforced by the server.
        max_megapixels (`float`): the largest image decoded.
        progress (`bool`): show the indexing progress bar.
        strict (`bool`): raise instead of building a page that shows why the model or gallery cannot be used.

    Returns:
        [`DemoApp`]; call `.launch()` to serve it.
    """
    try:
        demo_model = load_demo_model(model, device)
        source = open_gallery(gallery, gallery_split) if gallery is not None else default_gallery(cache_dir=cache_dir)
        index = build_gallery_index(demo_model, source, cache_dir, batch_size, max_megapixels, progress)
    except (ModelLoadError, ValueError, FileNotFoundError) as error:
        if strict:
            raise
        logger.error("the demo cannot start: %s", error)
        return DemoApp(error_blocks(str(error)), None, max_upload_mb)
    engine = DemoEngine(demo_model, index, top_k, max_megapixels)
    examples_dir = Path(cache_dir).expanduser().resolve() / f"examples-{index.cache_path.stem}"
    examples = write_examples(index, examples_dir)
    return DemoApp(build_blocks(engine, str(model), examples), engine, max_upload_mb, [str(examples_dir)])
