"""Safe image reading: every kind of damage has its reason, repairs give correct pixels, resizing never upscales."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from convirt_hf.data import images as images_module
from convirt_hf.data.images import ImageProblem, encode_png, load_image, resize_long_side
from convirt_hf.data.skips import SkipLedger


def noise(width=24, height=20, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def encoded(array_or_image, fmt="PNG", **save_kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


# --- problems ---------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageProblem) as raised:
        load_image(tmp_path / "absent.png")
    assert raised.value.reason == "missing_file"
    with pytest.raises(ImageProblem) as raised:
        load_image(tmp_path)  # a folder is not an image file
    assert raised.value.reason == "missing_file"


def test_zero_byte_file_and_bytes(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    for source in (tmp_path / "empty.png", b"", {"bytes": b"", "path": None}):
        with pytest.raises(ImageProblem) as raised:
            load_image(source)
        assert raised.value.reason == "zero_byte"


@pytest.mark.parametrize(
    "fmt, cut",
    [
        ("PNG", lambda n: n // 2),  # cut inside the pixel data
        ("PNG", lambda n: n - 20),  # cut after the pixel data: zlib finishes, only the CRC/IEND check sees it
        ("PNG", lambda n: n - 5),  # only the end chunk is incomplete
        ("JPEG", lambda n: n // 2),
        ("JPEG", lambda n: n - 2),  # just the end-of-image marker missing
    ],
)
def test_truncated_files_are_detected(tmp_path, fmt, cut):
    data = encoded(noise(64, 64), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: cut(len(data))])
    with pytest.raises(ImageProblem) as raised:
        load_image(path)
    assert raised.value.reason == "truncated"
    with pytest.raises(ImageProblem) as raised:
        load_image(data[: cut(len(data))])
    assert raised.value.reason == "truncated"


def test_truncation_is_detected_even_if_pil_is_told_to_accept_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries set it process-wide
    data = encoded(noise(64, 64), "JPEG")
    with pytest.raises(ImageProblem) as raised:
        load_image(data[: len(data) // 2])
    assert raised.value.reason == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_corrupt_bytes(tmp_path):
    (tmp_path / "text.png").write_bytes(b"this is not an image at all, just text" * 10)
    with pytest.raises(ImageProblem) as raised:
        load_image(tmp_path / "text.png")
    assert raised.value.reason == "corrupt"
    # Garbage after a valid signature: PIL says "Truncated File Read", but nothing was cut off.
    for signature in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8"):
        with pytest.raises(ImageProblem) as raised:
            load_image(signature + b"garbage" * 40)
        assert raised.value.reason == "corrupt"
    damaged = bytearray(encoded(noise(64, 64)))
    damaged[120:180] = bytes(60)  # garbage inside the compressed data, file length unchanged
    with pytest.raises(ImageProblem) as raised:
        load_image(bytes(damaged))
    assert raised.value.reason == "corrupt"


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (1200, 1000)).save(path)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "verify", no_decoding)
    with pytest.raises(ImageProblem) as raised:
        load_image(path, max_pixels=1_199_999)
    assert raised.value.reason == "too_large"
    assert "1200 x 1000" in raised.value.detail


def test_pixel_limit_boundary_and_arrays():
    assert load_image(noise(30, 30), max_pixels=900).size == (30, 30)
    with pytest.raises(ImageProblem, match="too_large"):
        load_image(noise(31, 30), max_pixels=900)
    with pytest.raises(ImageProblem, match="too_large"):
        load_image(Image.fromarray(noise(31, 30)), max_pixels=900)


def test_pil_decompression_bomb_error_is_too_large(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2x this, before our own check
    with pytest.raises(ImageProblem) as raised:
        load_image(path, max_pixels=10**9)
    assert raised.value.reason == "too_large"


def test_unsupported_or_empty_source_is_an_image_problem_not_a_crash():
    # A record whose image is None (an empty cell) or holds a number must be skipped and counted like a corrupt file.
    with pytest.raises(ImageProblem) as raised:
        load_image(None)
    assert raised.value.reason == "missing_file"
    with pytest.raises(ImageProblem) as raised:
        load_image(12)
    assert raised.value.reason == "unsupported_image" and "int" in raised.value.detail


# --- repairs ----------------------------------------------------------------------------------------------------


def test_16bit_gradient_is_windowed_to_the_full_8bit_range(tmp_path):
    # 12-bit detector data in a 16-bit PNG: >> 8 would give 0..15, nearly black.
    gradient = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    ledger = SkipLedger()
    image = load_image(tmp_path / "deep.png", row_id="r1", ledger=ledger)
    values = np.asarray(image)
    assert image.mode == "L"
    assert values.min() == 0 and values.max() == 255
    assert np.all(np.diff(values[0].astype(int)) >= 0)  # still a gradient
    expected = np.rint(np.linspace(0, 255, 64)).astype(np.uint8)
    assert np.abs(values[0].astype(int) - expected).max() <= 1
    assert ledger.repaired == {"16bit_to_8bit": 1}


def test_16bit_and_float_arrays_are_windowed():
    repairs: list[str] = []
    values = np.asarray(load_image(np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16), repairs=repairs))
    assert values.min() == 0 and values.max() == 255 and repairs == ["16bit_to_8bit"]
    repairs.clear()
    values = np.asarray(load_image(np.array([[-1.0, 0.0], [0.5, 1.0]], dtype=np.float32), repairs=repairs))
    assert values.tolist() == [[0, 128], [191, 255]] and repairs == ["float_to_8bit"]
    constant = np.asarray(load_image(np.full((4, 4), 70, dtype=np.uint16)))
    assert constant.tolist() == np.full((4, 4), 70).tolist()  # no range to stretch: the value is kept


def test_rgba_and_la_are_flattened_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    ledger = SkipLedger()
    values = np.asarray(load_image(tmp_path / "alpha.png", ledger=ledger))
    assert np.all(np.abs(values.astype(int) - 100) <= 1)  # 200 at half opacity over black
    la = np.stack([np.full((4, 4), 80, np.uint8), np.full((4, 4), 255, np.uint8)], axis=-1)
    flattened = np.asarray(load_image(Image.fromarray(la, mode="LA"), ledger=ledger))
    assert flattened.tolist() == np.full((4, 4), 80).tolist()
    assert ledger.repaired == {"alpha_flattened": 2}


def test_palette_image_is_converted(tmp_path):
    palette_image = Image.new("P", (6, 6))
    palette_image.putpalette([0, 0, 0, 90, 90, 90, 250, 250, 250] + [0] * (256 * 3 - 9))
    palette_image.putdata([1] * 18 + [2] * 18)
    palette_image.save(tmp_path / "palette.png")
    ledger = SkipLedger()
    values = np.asarray(load_image(tmp_path / "palette.png", ledger=ledger))
    assert sorted(set(values.ravel().tolist())) == [90, 250]
    assert ledger.repaired == {"palette_converted": 1}


def test_rgb_to_gray_is_normal_not_a_repair():
    ledger = SkipLedger()
    rgb = np.zeros((5, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    image = load_image(encoded(rgb, "JPEG", quality=95), ledger=ledger)
    assert image.mode == "L" and not ledger.repaired
    assert abs(int(np.asarray(image).mean()) - 76) <= 3  # ITU-R 601 luma of pure red


def test_every_source_form_gives_the_same_pixels(tmp_path):
    array = noise()
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    data = path.read_bytes()
    forms = [path, str(path), data, bytearray(data), {"bytes": data, "path": "ignored.png"},
             {"bytes": None, "path": str(path)}, Image.open(path), Image.fromarray(array), array, array[..., None]]
    for form in forms:
        image = load_image(form)
        assert image.mode == "L" and image.size == (24, 20)
        assert np.array_equal(np.asarray(image), array), type(form)


def test_draft_decoding_keeps_truncation_detection_and_size_floor():
    data = encoded(noise(640, 480), "JPEG")
    image = load_image(data, draft_size=100)
    assert min(image.size) >= 100 and image.size[0] < 640  # decoded at a reduced scale, still >= 100
    with pytest.raises(ImageProblem, match="truncated"):
        load_image(data[: len(data) // 2], draft_size=100)


# --- DICOM ------------------------------------------------------------------------------------------------------


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail, installed or not
    (tmp_path / "scan.dcm").write_bytes(bytes(128) + b"DICM" + bytes(64))
    with pytest.raises(ImportError, match=r"convirt-hf\[dicom\]"):
        load_image(tmp_path / "scan.dcm")
    with pytest.raises(ImportError, match=r"convirt-hf\[dicom\]"):
        load_image(bytes(128) + b"DICM" + bytes(64))  # recognised by its magic bytes, whatever the name


def _write_dicom(path, pixels: np.ndarray, **attributes):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PhotometricInterpretation = attributes.pop("PhotometricInterpretation", "MONOCHROME2")
    for key, value in attributes.items():
        setattr(dataset, key, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(str(path), dataset, enforce_file_format=True)
    else:
        dataset.is_little_endian, dataset.is_implicit_VR = True, False
        dataset.save_as(str(path), write_like_original=False)
    return path


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    pytest.importorskip("pydicom")
    gradient = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (4, 1))
    plain = load_image(_write_dicom(tmp_path / "plain.dcm", gradient))
    assert np.asarray(plain)[0, 0] == 0 and np.asarray(plain)[0, -1] == 255
    inverted = load_image(_write_dicom(tmp_path / "inv.dcm", gradient, PhotometricInterpretation="MONOCHROME1"))
    assert np.array_equal(np.asarray(inverted), 255 - np.asarray(plain))
    windowed = load_image(_write_dicom(tmp_path / "win.dcm", gradient, RescaleSlope=1, RescaleIntercept=-1024,
                                       WindowCenter=0, WindowWidth=400))
    values = np.asarray(windowed)[0]
    assert values[0] == 0 and values[-1] == 255 and (values == 0).sum() > 10 and (values == 255).sum() > 10


# --- resize and encode ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, expected", [((300, 200), (256, 171)), ((200, 300), (171, 256)),
                                            ((1000, 7), (256, 2)), ((257, 257), (256, 256))])
def test_resize_long_side(size, expected):
    assert resize_long_side(Image.new("L", size), 256).size == expected


def test_resize_never_upscales():
    small = Image.new("L", (100, 40))
    assert resize_long_side(small, 256) is small
    assert resize_long_side(Image.new("L", (256, 10)), 256).size == (256, 10)
    with pytest.raises(ValueError):
        resize_long_side(small, 0)


def test_encode_png_round_trip():
    array = noise()
    data = encode_png(Image.fromarray(array))
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), array)


def test_module_exports():
    assert set(images_module.__all__) >= {"ImageProblem", "load_image", "resize_long_side", "encode_png"}
