"""Safe decoding: every mode to sensible RGB, EXIF orientation, formats, and clean failures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from clarivis.data.io import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    image_size,
    is_image_path,
    load_image,
    to_rgb,
)
from clarivis.errors import DataError, ImageDecodeError


def _gradient_rgb(width: int = 40, height: int = 30) -> Image.Image:
    """An RGB image whose pixels differ, so orientation and frame mix-ups show."""
    xs = np.linspace(0, 255, width, dtype=np.uint8)
    ys = np.linspace(0, 255, height, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], np.full((height, width), 128)))
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)).astype(np.uint8))


def _assert_rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --- names -------------------------------------------------------------------------------


def test_is_image_path_is_case_insensitive() -> None:
    assert is_image_path("a/b/cat.JPG")
    assert is_image_path(Path("x.tiff"))
    assert is_image_path("scan.PGM")
    assert not is_image_path("notes.txt")
    assert not is_image_path("jpg")  # a bare name is not an extension
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_pixel_limit_is_sane() -> None:
    assert 10_000_000 < MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS


# --- modes -------------------------------------------------------------------------------


def test_rgb_passes_through_unchanged() -> None:
    image = _gradient_rgb()
    assert to_rgb(image) is image


@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_plain_modes_convert(mode: str) -> None:
    image = _gradient_rgb().convert(mode)
    expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(_assert_rgb(to_rgb(image)), expected)


def test_rgba_transparent_becomes_white_and_opaque_is_kept() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((1, 1), (200, 10, 10, 255))
    image.putpixel((2, 2), (0, 0, 0, 128))
    pixels = _assert_rgb(to_rgb(image))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[1, 1]) == (200, 10, 10)
    assert all(120 <= v <= 135 for v in pixels[2, 2])  # half-transparent black over white


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBa", "La"])
def test_other_alpha_modes_composite_over_white(mode: str) -> None:
    image = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    image.putpixel((1, 1), (0, 0, 0, 255))
    # Pillow's RGBA -> La conversion drops alpha, so premultiplied La is made from LA.
    converted = image.convert("LA").convert("La") if mode == "La" else image.convert(mode)
    pixels = _assert_rgb(to_rgb(converted))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[1, 1]) == (0, 0, 0)


def test_palette_with_transparency_composites_over_white() -> None:
    image = Image.new("P", (3, 3), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0  # palette entry 0 (black) is transparent
    pixels = _assert_rgb(to_rgb(image))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[1, 1]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV"])
def test_colour_spaces_convert_via_pillow(mode: str) -> None:
    image = (
        _gradient_rgb().convert(mode) if mode != "LAB" else Image.new("LAB", (4, 4), (50, 128, 128))
    )
    pixels = _assert_rgb(to_rgb(image))
    assert pixels.shape == (image.height, image.width, 3)
    if mode != "LAB":  # round trip through the colour space stays close to the original
        original = np.asarray(_gradient_rgb()).astype(int)
        assert np.abs(pixels.astype(int) - original).mean() < 8


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I", "F"])
def test_high_bit_depth_is_stretched_to_full_range(mode: str) -> None:
    # 12-bit data stored in a wider type: a plain convert would be almost black or saturated.
    values = np.linspace(0, 4095, 64 * 16).reshape(16, 64).round()
    image = (
        Image.fromarray(values.astype(np.int32)).convert(mode)
        if mode != "F"
        else (Image.fromarray(values.astype(np.float32)))
    )
    assert image.mode == mode
    pixels = _assert_rgb(to_rgb(image))
    assert pixels.min() == 0 and pixels.max() == 255
    assert abs(int(pixels[..., 0].mean()) - 127) <= 2  # linear ramp stays linear
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_high_bit_depth_with_offset_range() -> None:
    values = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    pixels = _assert_rgb(to_rgb(Image.fromarray(values)))
    assert pixels[0, 0, 0] == 0 and pixels[1, 1, 0] == 255


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (777, 128)])
def test_constant_high_bit_depth_does_not_divide_by_zero(value: int, expected: int) -> None:
    image = Image.fromarray(np.full((5, 5), value, dtype=np.uint16))
    with np.errstate(all="raise"):
        pixels = _assert_rgb(to_rgb(image))
    assert (pixels == expected).all()


def test_float_image_with_nan_and_inf() -> None:
    values = np.array([[0.0, np.nan], [np.inf, 2.0]], dtype=np.float32)
    pixels = _assert_rgb(to_rgb(Image.fromarray(values)))
    assert pixels[0, 0, 0] == 0 and pixels[1, 1, 0] == 255


# --- EXIF orientation ----------------------------------------------------------------------


def _jpeg_with_orientation(path: Path, orientation: int) -> Image.Image:
    image = _gradient_rgb(40, 30)
    exif = image.getexif()
    exif[ExifTags.Base.Orientation] = orientation
    image.save(path, format="JPEG", exif=exif, quality=95)
    return image


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    original = _jpeg_with_orientation(path, 6)
    loaded = load_image(path)
    assert loaded.size == (30, 40)
    assert image_size(path) == (30, 40)
    # Orientation 6 means "rotate 90 degrees clockwise to display".
    expected = np.asarray(original.transpose(Image.Transpose.ROTATE_270)).astype(int)
    assert np.abs(np.asarray(loaded).astype(int) - expected).mean() < 4


def test_exif_orientation_1_keeps_size(tmp_path: Path) -> None:
    path = tmp_path / "upright.jpg"
    _jpeg_with_orientation(path, 1)
    assert load_image(path).size == (40, 30)
    assert image_size(path) == (40, 30)


# --- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fmt", "lossless"),
    [(".jpg", "JPEG", False), (".png", "PNG", True), (".webp", "WEBP", False),
     (".bmp", "BMP", True), (".tif", "TIFF", True), (".ppm", "PPM", True)],
)  # fmt: skip
def test_formats_round_trip(tmp_path: Path, suffix: str, fmt: str, lossless: bool) -> None:
    original = _gradient_rgb()
    path = tmp_path / f"image{suffix}"
    original.save(path, format=fmt)
    loaded = load_image(path)
    assert loaded.size == original.size and image_size(path) == original.size
    difference = np.abs(_assert_rgb(loaded).astype(int) - np.asarray(original).astype(int))
    assert difference.max() == 0 if lossless else difference.mean() < 6


def test_16_bit_tiff_and_png_round_trip(tmp_path: Path) -> None:
    values = np.linspace(0, 4095, 32 * 8).reshape(8, 32).round().astype(np.uint16)
    for name in ("scan.tif", "scan.png"):
        Image.fromarray(values).save(tmp_path / name)
        pixels = _assert_rgb(load_image(tmp_path / name))
        assert pixels.min() == 0 and pixels.max() == 255


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(tmp_path: Path, fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    red, green, blue = (int(v) for v in np.asarray(load_image(path)).reshape(-1, 3).mean(axis=0))
    assert red > 200 and blue < 50 and green < 50


def test_bytes_and_stream_input(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _gradient_rgb().save(buffer, format="PNG")
    assert load_image(buffer.getvalue()).size == (40, 30)
    buffer.seek(0)
    assert load_image(buffer).size == (40, 30)


def test_result_outlives_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _gradient_rgb().save(path)
    image = load_image(path)
    path.unlink()
    assert image.getpixel((0, 0)) is not None  # fully loaded, not lazily tied to the file


# --- failures ------------------------------------------------------------------------------


def _decode_error(source: object, **kwargs: object) -> str:
    with pytest.raises(ImageDecodeError) as info:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_jpeg(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _gradient_rgb(200, 150).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = _decode_error(path)
    assert message.startswith(f"{path}: ") and "truncated or corrupt" in message


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert str(path) in _decode_error(path)
    with pytest.raises(ImageDecodeError):
        image_size(path)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    message = _decode_error(path)
    assert str(path) in message and "not an image" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    message = _decode_error(path)
    assert str(path) in message and "not found" in message
    with pytest.raises(ImageDecodeError, match="nope.png"):
        image_size(path)


def test_decode_error_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        load_image(tmp_path / "nope.png")


def test_disallowed_format_is_refused(tmp_path: Path) -> None:
    # Pillow reads PCX, but clarivis only runs the decoders it lists.
    path = tmp_path / "image.png"
    _gradient_rgb().save(path, format="PCX")
    assert "not an image" in _decode_error(path)


def test_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _gradient_rgb(20, 10).save(path)
    message = _decode_error(path, max_pixels=100)
    assert message.startswith(f"{path}: 20x10 pixels") and "100-pixel limit" in message
    assert load_image(path, max_pixels=200).size == (20, 10)


def test_bytes_errors_are_labelled() -> None:
    assert _decode_error(b"").startswith("<bytes>: ")
    assert _decode_error(b"GIF89a garbage").startswith("<bytes>: ")


def test_pillow_bomb_guard_becomes_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    _gradient_rgb(40, 30).save(buffer, format="PNG")
    # Pillow raises (not just warns) beyond twice its own limit, before our check can run.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    message = _decode_error(buffer.getvalue(), max_pixels=10_000)
    assert "decompression bomb" in message


@pytest.mark.parametrize(("size", "reduce_to", "expected"), [
    ((640, 480), 32, (160, 120)),  # 1/4: the largest scale keeping both sides >= 64 px
    ((640, 480), 100, (320, 240)),  # 1/2
    ((640, 480), 160, (640, 480)),  # under 4x: full size
    ((640, 480), None, (640, 480)),
])
def test_large_jpeg_decodes_reduced_but_at_least_twice_the_model_input(
    tmp_path: Path, size: tuple[int, int], reduce_to: int | None, expected: tuple[int, int]
) -> None:
    path = tmp_path / "big.jpg"
    _gradient_rgb(*size).save(path, quality=95)
    loaded = load_image(path, reduce_to=reduce_to)
    assert loaded.size == expected and loaded.mode == "RGB"
    # The reduced decode is a faithful small version of the image, not a crop.
    full = np.asarray(load_image(path).resize(expected, Image.Resampling.BOX)).astype(int)
    assert np.abs(np.asarray(loaded).astype(int) - full).mean() < 3


def test_reduced_jpeg_keeps_exif_orientation_and_png_is_never_reduced(tmp_path: Path) -> None:
    image = _gradient_rgb(640, 480)
    exif = image.getexif()
    exif[ExifTags.Base.Orientation] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "rotated.jpg", reduce_to=32).size == (120, 160)
    image.save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", reduce_to=32).size == (640, 480)
