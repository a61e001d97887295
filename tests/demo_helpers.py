"""Builders shared by the demo page's tests: a tiny model folder, a tiny gallery, an offline Gradio environment."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CARD = """---
license: apache-2.0
tags: [convirt]
---
# Tiny ConVIRT

A tiny ConVIRT model built by the tests: a test ResNet and a 2-layer BERT.

## Out-of-scope use

This model is **not a medical device**.
"""


def offline_gradio_env(root: Path) -> dict[str, str]:
    """
    Sets what keeps Gradio, gradio_client and their temporary files offline and inside `root`; returns the previous
    values (for `restore_env`). Must run before gradio is first imported: it reads GRADIO_TEMP_DIR at import.
    """
    values = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(root / "gradio"),
              "TMPDIR": str(root / "tmp"), "XDG_CONFIG_HOME": str(root / "xdg-config"),
              "XDG_CACHE_HOME": str(root / "xdg-cache")}
    previous = {name: os.environ.get(name) for name in [*values, "__tempdir__"]}
    previous["__tempdir__"] = tempfile.tempdir
    for name, value in values.items():
        if name != "GRADIO_ANALYTICS_ENABLED" and name != "HF_HUB_OFFLINE":
            Path(value).mkdir(parents=True, exist_ok=True)
        os.environ[name] = value
    tempfile.tempdir = values["TMPDIR"]  # gradio_client leaves empty folders in the temporary directory
    return previous


def restore_env(previous: dict) -> None:
    tempfile.tempdir = previous.pop("__tempdir__")
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def save_demo_model(folder: Path) -> Path:
    """A tiny untrained ConVIRT folder (weights, processor, tokenizer, model card) that the demo loads."""
    import torch

    from convirt_hf import ConvirtModel, ConvirtProcessor

    from helpers import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size))
    model.save_pretrained(folder)
    ConvirtProcessor.from_tokenizer(tokenizer, image_size=32, resize_size=36).save_pretrained(folder)
    (folder / "README.md").write_text(CARD)
    return folder


def truncated_png(path: Path, size: int = 64) -> Path:
    """A PNG cut off halfway through its pixel data: PIL opens it, then fails to decode it."""
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def huge_png(path: Path, width: int = 10_000, height: int = 10_000) -> Path:
    """
    A valid 8-bit grayscale PNG of `width` x `height` black pixels, written row by row through zlib (a few hundred
    kB on disk, no 100 MB array in memory).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def write_gallery(folder: Path, per_category: int = 2, image_size: int = 64, corrupt: bool = True) -> Path:
    """
    The synthetic corpus's retrieval images (`per_category` per category, small) as PNG files, plus, with `corrupt`,
    a truncated PNG, a text file named .png, and a README that is not an image at all.
    """
    from convirt_hf.data.synthetic import SyntheticCorpusConfig
    from convirt_hf.demo.gallery import render_synthetic_gallery

    render_synthetic_gallery(folder, per_category, SyntheticCorpusConfig(image_size=image_size))
    if corrupt:
        truncated_png(folder / "zz-truncated.png")
        (folder / "zz-notes.png").write_text("a text file with an image's name\n")
        (folder / "README.txt").write_text("not an image\n")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A minimal 16-bit MONOCHROME2 DICOM file (needs pydicom)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path
