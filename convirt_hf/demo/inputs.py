"""What a person gives the demo page, checked and decoded: radiographs and candidate sentences.

Every refusal is an [`InputError`] whose message is written for the person at the browser (what was wrong and what
to do); the page shows it as is. Nothing here imports gradio, so the checks are tested and reused without it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# At most this many candidate sentences are compared at once: more makes an unreadable chart and a slow request.
MAX_SENTENCES = 64
MAX_SENTENCE_CHARACTERS = 500
# A chest radiograph is about 3000 x 3000 px (9 MP) and a mammogram 4000 x 5000 (20 MP): 50 MP leaves room for both
# while refusing images whose decoding alone would take gigabytes.
DEFAULT_MAX_MEGAPIXELS = 50.0
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", *DICOM_SUFFIXES)
ACCEPTED_FORMATS = "PNG (8 or 16 bit), JPEG, TIFF, BMP, WebP, or DICOM"


class InputError(ValueError):
    """Input the page refuses; the message is meant for the person who gave it."""


def _display_name(source) -> str:
    # Gradio keeps an upload's original file name as the last part of its temporary path.
    return Path(source).name if isinstance(source, (str, os.PathLike)) else "the image"


def is_dicom(path: str | os.PathLike) -> bool:
    """A DICOM file by its suffix or by the 'DICM' marker that follows the 128-byte preamble."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _check_size(width: int, height: int, name: str, max_megapixels: float) -> None:
    if width * height > max_megapixels * 1e6:
        raise InputError(
            f"{name} is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels); this page reads images up "
            f"to {max_megapixels:g} megapixels. Downscale it (the model sees a few hundred pixels anyway) and upload "
            "it again."
        )


def _read_dicom(path: Path, max_megapixels: float) -> Image.Image:
    from convirt_hf.modeling.processing_convirt import read_dicom

    try:
        import pydicom
    except ImportError as error:
        raise InputError(f"{path.name} is a DICOM file, and reading DICOM needs pydicom, which this server does not "
                         "have (pip install 'convirt-hf[dicom]'). Upload a PNG or JPEG export instead.") from error
    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        _check_size(int(header.Columns), int(header.Rows), path.name, max_megapixels)
        return read_dicom(path).convert("RGB")
    except InputError:
        raise
    except Exception as error:  # pydicom raises many types for broken files: all mean "cannot read it"
        raise InputError(f"{path.name} could not be read as a DICOM image ({type(error).__name__}: {error}).") \
            from error


def read_image(source, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """
    Decodes an uploaded or gallery image into 8-bit RGB the way the processor does (16-bit windowed by its own range,
    alpha dropped, DICOM windowed and MONOCHROME1 inverted), refusing what cannot or should not be decoded.

    Args:
        source (`str`, `os.PathLike` or `bytes`): a file path, or the encoded bytes of an image.
        max_megapixels (`float`): the largest image accepted, checked from the header before any pixel is decoded.

    Returns:
        `PIL.Image.Image` in mode RGB.

    Raises:
        [`InputError`]: not an image, truncated or corrupt, too large, or DICOM without pydicom.
    """
    from convirt_hf.modeling.processing_convirt import to_pil_rgb

    name = _display_name(source)
    if source is None:
        raise InputError("Upload an image first (or pick one of the examples).")
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise InputError(f"{name} is not a file that this server can read.")
        if is_dicom(source):
            return _read_dicom(Path(source), max_megapixels)
    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            # the size check below replaces PIL's decompression-bomb warning with a message the person can act on
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(opened) as image:
                _check_size(*image.size, name, max_megapixels)
                image.load()
                return to_pil_rgb(image)
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise InputError(f"{name} is too large to decode safely ({error}).") from error
    except UnidentifiedImageError as error:
        raise InputError(f"{name} is not a readable image: upload a radiograph as {ACCEPTED_FORMATS}.") from error
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as error:
        # PIL reports a truncated or damaged file as OSError ("image file is truncated") or SyntaxError (bad chunks)
        raise InputError(f"{name} could not be decoded: the file is truncated or corrupt ({error}).") from error


def thumbnail(image: Image.Image, size: int = 256) -> Image.Image:
    """A copy no larger than `size` on its long side, for showing in the page."""
    small = image.copy()
    small.thumbnail((size, size))
    return small


def parse_sentences(text: str | None, max_sentences: int = MAX_SENTENCES) -> list[str]:
    """
    The candidate sentences of a zero-shot classification, one per non-empty line.

    Raises:
        [`InputError`]: fewer than two sentences (probabilities compare sentences with each other), more than
        `max_sentences`, a sentence repeated, or a line longer than `MAX_SENTENCE_CHARACTERS`.
    """
    sentences = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(sentences) < 2:
        raise InputError(
            f"Enter at least two candidate sentences, one per line (got {len(sentences)}): the probabilities say "
            "which sentence fits the image best, so there must be more than one, e.g. a finding and its absence."
        )
    if len(sentences) > max_sentences:
        raise InputError(f"{len(sentences)} candidate sentences: this page compares at most {max_sentences} at a "
                         "time. Keep the ones you want to compare and try again.")
    seen: dict[str, int] = {}
    for number, sentence in enumerate(sentences, start=1):
        if len(sentence) > MAX_SENTENCE_CHARACTERS:
            raise InputError(f"Sentence {number} has {len(sentence)} characters; write sentences of at most "
                             f"{MAX_SENTENCE_CHARACTERS} (the model reads 128 tokens).")
        if sentence in seen:
            raise InputError(f"Sentence {number} repeats sentence {seen[sentence]} ({sentence!r}): each candidate "
                             "must be different.")
        seen[sentence] = number
    return sentences


def parse_query(text: str | None) -> str:
    """A text-to-image query: one non-empty sentence of reasonable length."""
    query = " ".join((text or "").split())
    if not query:
        raise InputError("Type a sentence to search the gallery with, e.g. 'The cardiac silhouette is enlarged.'")
    if len(query) > MAX_SENTENCE_CHARACTERS:
        raise InputError(f"The query has {len(query)} characters; write at most {MAX_SENTENCE_CHARACTERS}.")
    return query
