"""Safe image reading: one function that turns any image source into an 8-bit grayscale PIL image or says why not.

Medical image collections contain every kind of damage: files listed but never copied, zero-byte placeholders, files
cut short by an interrupted transfer, bytes that are not an image at all, 16-bit PNGs holding 12-bit detector data,
RGBA screenshots, palette images, and the occasional 30 000 x 30 000 scan. :func:`load_image` reads all of them the
same way:

- **problems** raise :class:`ImageProblem` with a short ``reason`` (``"missing_file"``, also for an empty (``None``)
  image, ``"zero_byte"``, ``"truncated"``, ``"corrupt"``, ``"too_large"``, ``"unreadable_dicom"``,
  ``"unsupported_image"`` for a value that is no kind of image); readers skip the row and count the reason in their
  :class:`~convirt_hf.data.skips.SkipLedger`;
- **repairs** return a usable image and tell the ledger (``"16bit_to_8bit"``, ``"float_to_8bit"``,
  ``"alpha_flattened"``, ``"palette_converted"``); RGB to grayscale is normal and not counted.

Every image is decoded fully (a lazy PIL open only reads the header, so a truncated file would otherwise pass) with
PIL's ``LOAD_TRUNCATED_IMAGES`` forced off for the duration, and PNG files are also checksum-verified up to their end
chunk, because zlib can finish the pixel data of a PNG whose tail is missing. The pixel count is checked from the header
before any pixel is decoded.

DICOM files need the optional ``pydicom`` dependency (``pip install "convirt-hf[dicom]"``).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

if TYPE_CHECKING:
    from .skips import SkipLedger

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
DICOM_EXTRA_HINT = 'pip install "convirt-hf[dicom]"'

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_END = b"\xff\xd9"
_DICOM_MAGIC_OFFSET = 128
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "I;32", "I;32B", "I;32L")
_LOAD_TRUNCATED_LOCK = threading.Lock()


class ImageProblem(Exception):
    """
    An image that cannot be used; the row that holds it should be skipped and counted.

    Args:
        reason: a short key for the ledger (``"missing_file"``, ``"zero_byte"``, ``"truncated"``, ``"corrupt"``,
            ``"too_large"``, ``"unreadable_dicom"``, ``"unsupported_image"``).
        detail: a human-readable explanation (file name, sizes, the decoder's message).
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Forces PIL to raise on truncated data, whatever another library set the process-wide flag to."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:  # the usual case: nothing to change, no lock (threads decode in parallel)
        yield
        return
    with _LOAD_TRUNCATED_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _resolve_source(source: Any) -> Any:
    """Unwraps a ``datasets`` image dict to its bytes (preferred: they are what the dataset holds) or path."""
    if source is None:
        raise ImageProblem("missing_file", "no image (the row's image is empty)")
    if isinstance(source, dict):
        data = source.get("bytes")
        if data is not None:
            return bytes(data)
        path = source.get("path")
        if path:
            return path
        raise ImageProblem("missing_file", "image dict has neither bytes nor a path")
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source)
    return source


def load_image(
    source: Any,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    row_id: str = "",
    ledger: SkipLedger | None = None,
    draft_size: int | None = None,
    repairs: list[str] | None = None,
) -> Image.Image:
    """
    Reads an image from any supported source and returns it as an 8-bit grayscale (``"L"``) PIL image.

    Args:
        source: a file path (``str`` / ``Path``; ``.dcm`` files go through pydicom), encoded bytes, a ``datasets``
            image dict (``{"bytes": ..., "path": ...}``), a PIL image or a numpy array (H x W, H x W x 3 or
            H x W x 4).
        max_pixels: the largest width x height accepted, checked from the header before decoding.
        row_id: the row's id, used in the ledger's messages.
        ledger: where repairs are reported (anything with a ``repair(row_id, reason, detail)`` method, usually a
            :class:`~convirt_hf.data.skips.SkipLedger`); ``None`` repairs silently.
        draft_size: for JPEG only, let the decoder scale down by a power of two while decoding, as long as both
            sides stay at least this large (a large speed-up when the image is resized afterwards anyway). The
            whole file is still decoded, so truncation is still detected.
        repairs: a list that receives the reason of every repair (besides `ledger`): a reader can then count the
            repairs only for rows it keeps.

    Returns:
        `PIL.Image.Image`: a fully decoded image in mode ``"L"``.

    Raises:
        ImageProblem: the image is missing (or `source` is ``None``), empty, truncated, corrupt, too large, an
            unreadable DICOM, or `source` is no kind of image (``"unsupported_image"``).
        ImportError: the source is a DICOM file and pydicom is not installed.
    """
    reporter: SkipLedger | _RepairList | None = ledger if repairs is None else _RepairList(repairs, ledger)
    source = _resolve_source(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, _describe(source))
        if isinstance(source, ImageFile.ImageFile) and getattr(source, "fp", None) is not None:
            # An image from Image.open() that was never loaded: decode it now, with the same checks.
            filename = getattr(source, "filename", "") or ""
            _decode(source, _describe(source), lambda: Path(filename).read_bytes() if filename else b"")
        return to_grayscale_8bit(source, row_id=row_id, ledger=reporter)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels=max_pixels, row_id=row_id, ledger=reporter)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), max_pixels=max_pixels, row_id=row_id, ledger=reporter, draft_size=draft_size)
    if isinstance(source, bytes):
        if not source:
            raise ImageProblem("zero_byte", "empty image bytes")
        if _looks_like_dicom(source):
            return _load_dicom(io.BytesIO(source), "<dicom bytes>", max_pixels=max_pixels)
        return _load_encoded(lambda: io.BytesIO(source), lambda: source, _describe(source), max_pixels=max_pixels,
                             row_id=row_id, ledger=reporter, draft_size=draft_size)
    # A row whose image cell holds a number or a list is bad input like a corrupt file: skipped and counted.
    raise ImageProblem("unsupported_image", f"unsupported image source type {type(source).__name__}")


class _RepairList:
    """Forwards repairs to a ledger (when there is one) and records their reasons in a list."""

    def __init__(self, reasons: list[str], ledger: Any | None):
        self.reasons = reasons
        self.ledger = ledger

    def repair(self, row_id: str, reason: str, detail: str = "") -> None:
        self.reasons.append(reason)
        if self.ledger is not None:
            self.ledger.repair(row_id, reason, detail)


def _load_path(path: Path, *, max_pixels: int, row_id: str, ledger: Any | None, draft_size: int | None) -> Image.Image:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageProblem("missing_file", str(path)) from None
    except OSError as error:  # a broken link, a permission problem: the file is not usable either way
        raise ImageProblem("missing_file", f"{path} ({error})") from None
    if not path.is_file():
        raise ImageProblem("missing_file", f"{path} is not a file")
    if size == 0:
        raise ImageProblem("zero_byte", str(path))
    with open(path, "rb") as handle:
        head = handle.read(_DICOM_MAGIC_OFFSET + 4)
    if path.suffix.lower() == ".dcm" or _looks_like_dicom(head):
        return _load_dicom(path, str(path), max_pixels=max_pixels)
    return _load_encoded(lambda: open(path, "rb"), path.read_bytes, str(path), max_pixels=max_pixels,
                         row_id=row_id, ledger=ledger, draft_size=draft_size)


def _looks_like_dicom(head: bytes) -> bool:
    return head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageProblem("too_large", f"{name}: {width} x {height} = {width * height} pixels > {max_pixels}")
    if width <= 0 or height <= 0:
        raise ImageProblem("corrupt", f"{name}: empty image ({width} x {height})")


def _png_structure(data: bytes) -> str:
    """Walks a PNG's chunks: ``"truncated"`` if it ends inside a valid structure, ``"corrupt"`` if the structure
    or a checksum is wrong, ``"complete"`` if every chunk up to IEND is intact."""
    position = len(_PNG_SIGNATURE)
    while True:
        if position + 8 > len(data):
            return "truncated"
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        first = position == len(_PNG_SIGNATURE)
        if not kind.isalpha() or length >= 2**31 or (first and (kind, length) != (b"IHDR", 13)):
            return "corrupt"
        end = position + 12 + length
        if end > len(data):
            return "truncated"
        if zlib.crc32(data[position + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return "corrupt"
        if kind == b"IEND":
            return "complete"
        position = end


def _jpeg_structure(data: bytes) -> str:
    """Walks a JPEG's marker segments up to the first scan: ``"truncated"``, ``"corrupt"`` or ``"complete"``."""
    position = 2
    while True:
        if position >= len(data):
            return "truncated"
        if data[position] != 0xFF:
            return "corrupt"
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            return "truncated"
        marker = data[position]
        position += 1
        if marker == 0xD9 or marker == 0x00:  # end of image before any scan, or a stuffed byte: not a JPEG stream
            return "corrupt"
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if position + 2 > len(data):
            return "truncated"
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2:
            return "corrupt"
        if position + length > len(data):
            return "truncated"
        position += length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the end-of-image marker
            return "complete" if data.rstrip(b"\x00").endswith(_JPEG_END) else "truncated"


def _problem_from_error(error: BaseException, name: str, read_bytes) -> ImageProblem:
    """
    Names a decoder failure. The decoders' messages do not tell a cut file from a damaged one (PIL says "Truncated
    File Read" for garbage after a PNG signature), so PNG and JPEG files are classified from their own structure.
    """
    message = str(error) or type(error).__name__
    try:
        data = read_bytes()
    except OSError:
        data = b""
    if data.startswith(_PNG_SIGNATURE):
        verdict = _png_structure(data)
    elif data.startswith(b"\xff\xd8"):
        verdict = _jpeg_structure(data)
    else:
        verdict = "truncated" if "truncat" in message.lower() else "corrupt"
    return ImageProblem("truncated" if verdict == "truncated" else "corrupt", f"{name}: {message}")


def _open(make_stream, name: str, read_bytes) -> Image.Image:
    with warnings.catch_warnings():
        # We enforce our own pixel limit from the header; PIL's warning for large images is noise here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(make_stream())
        except Image.DecompressionBombError as error:
            raise ImageProblem("too_large", f"{name}: {error}") from None
        except UnidentifiedImageError:
            problem = _problem_from_error(ValueError("not a recognised image format"), name, read_bytes)
            raise problem from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise _problem_from_error(error, name, read_bytes) from None


def _decode(image: Image.Image, name: str, read_bytes) -> None:
    with _strict_decoding():
        try:
            image.load()
        except MemoryError:
            raise ImageProblem("too_large", f"{name}: out of memory while decoding") from None
        except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, zlib errors, struct errors...
            raise _problem_from_error(error, name, read_bytes) from None


def _load_encoded(
    make_stream,
    read_bytes,
    name: str,
    *,
    max_pixels: int,
    row_id: str,
    ledger: Any | None,
    draft_size: int | None,
) -> Image.Image:
    image = _open(make_stream, name, read_bytes)
    try:
        _check_pixels(image.size, max_pixels, name)
        fmt = image.format
        if fmt == "PNG":
            # verify() reads every chunk and its CRC up to IEND; load() alone accepts a PNG cut after its pixel data.
            with _strict_decoding():
                try:
                    image.verify()
                except Exception as error:
                    raise _problem_from_error(error, name, read_bytes) from None
            image.close()
            image = _open(make_stream, name, read_bytes)
        if fmt == "JPEG" and draft_size and image.mode in ("L", "RGB"):
            image.draft(image.mode, (draft_size, draft_size))
        _decode(image, name, read_bytes)
        result = to_grayscale_8bit(image, row_id=row_id, ledger=ledger)
        # An "L" image comes back as itself; copy it, since the original is closed below.
        return result.copy() if result is image else result
    finally:
        image.close()


def _window_to_8bit(array: np.ndarray) -> np.ndarray:
    """Maps the array's own [min, max] to [0, 255] (12-bit data in a 16-bit container would be nearly black >> 8)."""
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    if not finite.all():
        array = np.where(finite, array, np.nanmin(np.where(finite, array, np.inf)) if finite.any() else 0.0)
    low, high = float(array.min()), float(array.max())
    if high <= low:  # a constant image: keep its value where it fits in 8 bits
        return np.full(array.shape, np.clip(round(low), 0, 255), dtype=np.uint8)
    scaled = (array - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _flatten_alpha(values: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composites over black: transparent margins around a radiograph are background, and background is dark."""
    result = values.astype(np.float64) * (alpha.astype(np.float64) / 255.0)
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def _report(ledger: Any | None, row_id: str, reason: str, detail: str) -> None:
    if ledger is not None:
        ledger.repair(row_id, reason, detail)


def to_grayscale_8bit(image: Image.Image, *, row_id: str = "", ledger: Any | None = None) -> Image.Image:
    """
    Converts a decoded PIL image to mode ``"L"``, repairing (and reporting) high bit depths, alpha and palettes.

    Args:
        image: a decoded PIL image in any mode.
        row_id: the row's id, for the ledger.
        ledger: receives ``repair(row_id, reason, detail)`` for every repair; RGB to grayscale is not a repair.

    Returns:
        `PIL.Image.Image`: the image in mode ``"L"``.
    """
    mode = image.mode
    if mode == "L":
        return image
    if mode in _HIGH_BIT_DEPTH_MODES:
        array = np.asarray(image)
        _report(ledger, row_id, "16bit_to_8bit", f"mode {mode}, values {array.min()}..{array.max()} windowed")
        return Image.fromarray(_window_to_8bit(array), mode="L")
    if mode == "F":
        array = np.asarray(image)
        _report(ledger, row_id, "float_to_8bit", "mode F windowed to its own range")
        return Image.fromarray(_window_to_8bit(array), mode="L")
    if mode == "P" or mode == "PA":
        _report(ledger, row_id, "palette_converted", f"mode {mode}")
        has_alpha = mode == "PA" or "transparency" in image.info
        converted = image.convert("RGBA" if has_alpha else "RGB")
        if has_alpha:
            rgba = np.asarray(converted)
            gray = np.asarray(Image.fromarray(rgba[..., :3], mode="RGB").convert("L"))
            return Image.fromarray(_flatten_alpha(gray, rgba[..., 3]), mode="L")
        return converted.convert("L")
    if mode in ("LA", "La"):
        _report(ledger, row_id, "alpha_flattened", f"mode {mode}")
        array = np.asarray(image.convert("LA"))
        return Image.fromarray(_flatten_alpha(array[..., 0], array[..., 1]), mode="L")
    if mode in ("RGBA", "RGBa"):
        _report(ledger, row_id, "alpha_flattened", f"mode {mode}")
        rgba = np.asarray(image.convert("RGBA"))
        gray = np.asarray(Image.fromarray(rgba[..., :3], mode="RGB").convert("L"))
        return Image.fromarray(_flatten_alpha(gray, rgba[..., 3]), mode="L")
    if mode == "1":
        return image.convert("L")
    if mode in ("I;16S", "I;32S") or mode.startswith("I;"):
        array = np.asarray(image.convert("I"))
        _report(ledger, row_id, "16bit_to_8bit", f"mode {mode} windowed")
        return Image.fromarray(_window_to_8bit(array), mode="L")
    # RGB, CMYK, YCbCr, LAB, HSV: an ordinary luminance conversion.
    return image.convert("L")


def _from_array(array: np.ndarray, *, max_pixels: int, row_id: str, ledger: Any | None) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageProblem("corrupt", f"array of shape {array.shape} is not an image (H x W, H x W x 3 or x 4)")
    _check_pixels((array.shape[1], array.shape[0]), max_pixels, "<array>")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3:
        if array.dtype != np.uint8:
            _report(ledger, row_id, "16bit_to_8bit", f"{array.dtype} colour array windowed")
            array = _window_to_8bit(array)
        mode = "RGB" if array.shape[-1] == 3 else "RGBA"
        return to_grayscale_8bit(Image.fromarray(np.ascontiguousarray(array), mode=mode), row_id=row_id, ledger=ledger)
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    reason = "float_to_8bit" if np.issubdtype(array.dtype, np.floating) else "16bit_to_8bit"
    _report(ledger, row_id, reason, f"{array.dtype} array, values {array.min()}..{array.max()} windowed")
    return Image.fromarray(_window_to_8bit(array), mode="L")


# --- DICOM ------------------------------------------------------------------------------------------------------


def _import_pydicom():
    try:
        import pydicom  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"Reading DICOM files needs pydicom, an optional dependency: {DICOM_EXTRA_HINT}"
        ) from error
    return pydicom


def _dicom_luts():
    """apply_modality_lut / apply_voi_lut live in pydicom.pixels (3.x) or pydicom.pixel_data_handlers.util (2.x)."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _load_dicom(source, name: str, *, max_pixels: int) -> Image.Image:
    pydicom = _import_pydicom()
    try:
        dataset = pydicom.dcmread(source, force=True)
    except Exception as error:
        raise ImageProblem("unreadable_dicom", f"{name}: {error}") from None
    rows, columns = int(getattr(dataset, "Rows", 0) or 0), int(getattr(dataset, "Columns", 0) or 0)
    if rows and columns:
        _check_pixels((columns, rows), max_pixels, name)
    try:
        array = dataset.pixel_array
    except Exception as error:  # no pixel data, an unsupported transfer syntax without its decoder, truncated data
        raise ImageProblem("unreadable_dicom", f"{name}: {error}") from None
    if array.ndim == 3 and int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        array = array[0]  # a multi-frame object: the first frame stands for the image
    if array.ndim == 3:
        raise ImageProblem("unreadable_dicom", f"{name}: colour DICOM ({array.shape}) is not a radiograph")
    apply_modality_lut, apply_voi_lut = _dicom_luts()
    try:
        values = apply_modality_lut(array, dataset)  # RescaleSlope / RescaleIntercept (or a modality LUT)
        has_voi = "VOILUTSequence" in dataset or ("WindowCenter" in dataset and "WindowWidth" in dataset)
        if has_voi:
            values = apply_voi_lut(values, dataset, index=0)  # the first window is the one the modality proposes
    except Exception as error:
        raise ImageProblem("unreadable_dicom", f"{name}: {error}") from None
    pixels = _window_to_8bit(values)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 255 - pixels  # MONOCHROME1 stores bone dark; invert so every image has bone bright
    return Image.fromarray(pixels, mode="L")


# --- resizing and encoding --------------------------------------------------------------------------------------


def resize_long_side(image: Image.Image, size: int = 256) -> Image.Image:
    """
    Scales `image` so its longer side is `size` pixels, keeping the aspect ratio; smaller images are returned unchanged
    (never upscaled, which would only add interpolated pixels).

    Args:
        image: a PIL image.
        size: the target length of the longer side.

    Returns:
        `PIL.Image.Image`: the resized image (or `image` itself when it is already small enough).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    width, height = image.size
    long_side = max(width, height)
    if long_side <= size:
        return image
    scale = size / long_side
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Fix the long side exactly (rounding could give size - 1 for some aspect ratios).
    if width >= height:
        new_size = (size, new_size[1])
    else:
        new_size = (new_size[0], size)
    # reducing_gap lets PIL box-reduce by an integer factor first: much faster on 3000-pixel radiographs, same result.
    return image.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_png(image: Image.Image, compress_level: int = 6) -> bytes:
    """
    Encodes an image as PNG bytes (lossless, so preprocessing adds no artefacts of its own).

    Args:
        image: a PIL image (mode ``"L"`` for the preprocessed corpus).
        compress_level: zlib level 0-9; 6 is PIL's default balance of size and speed.

    Returns:
        `bytes`: the PNG file's content.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageProblem",
    "encode_png",
    "load_image",
    "resize_long_side",
    "to_grayscale_8bit",
]
