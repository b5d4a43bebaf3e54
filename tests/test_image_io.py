"""Tests for upscale_cli.image_io: decoding, metadata, encoding, atomic writes and float resizing."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from upscale_cli import image_io
from upscale_cli.errors import ImageReadError, ImageWriteError
from upscale_cli.image_io import (
    LoadedImage,
    encode_image,
    extension,
    lanczos_resize,
    output_format,
    read_image,
    write_image,
)

RNG = np.random.default_rng(1234)


def random_u8(height: int, width: int, channels: int) -> np.ndarray:
    """Random 8-bit samples, (H, W, C)."""
    return RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)


def random_u16(height: int, width: int, channels: int) -> np.ndarray:
    """Random 16-bit samples that are not multiples of 257, so an 8-bit path cannot reproduce them."""
    values = RNG.integers(0, 65536, (height, width, channels), dtype=np.uint16)
    values[0, 0] = [0, 1, 65535, 257][:channels]
    return values


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth 8-bit colour gradient that lossy codecs reproduce closely."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
                    axis=2).astype(np.uint8)


def save(image: Image.Image, path: Path, fmt: str, **options) -> Path:
    """Save a Pillow image and return its path."""
    image.save(path, fmt, **options)
    return path


def as_u8(planes: np.ndarray) -> np.ndarray:
    """Float planes back to the 8-bit samples they came from."""
    return np.rint(planes * 255).astype(np.uint8)


def as_u16(planes: np.ndarray) -> np.ndarray:
    """Float planes back to the 16-bit samples they came from."""
    return np.rint(planes * 65535).astype(np.uint16)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk, written here independently of the module under test."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_insert(png: bytes, chunk: bytes) -> bytes:
    """Insert a chunk right after IHDR."""
    return png[:33] + chunk + png[33:]


def exif_block(orientation: int | None = None, make: str = "TestCam") -> bytes:
    """An EXIF block with a Make tag, an Exif sub-IFD date and optionally an orientation."""
    exif = Image.Exif()
    exif[0x010F] = make
    if orientation is not None:
        exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"
    return exif.tobytes()


def exif_tags(block: bytes | None) -> Image.Exif:
    """Parse an EXIF block with Pillow."""
    exif = Image.Exif()
    if block:
        exif.load(block)
    return exif


@pytest.fixture(scope="module")
def srgb_profile() -> bytes:
    """Real ICC profile bytes."""
    image_cms = pytest.importorskip("PIL.ImageCms")
    return image_cms.ImageCmsProfile(image_cms.createProfile("sRGB")).tobytes()


# --- round trips -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("tiff", "TIFF")])
def test_lossless_round_trip_is_exact(tmp_path: Path, fmt: str, pil_format: str) -> None:
    pixels = random_u8(5, 7, 3)
    loaded = read_image(save(Image.fromarray(pixels), tmp_path / "in", pil_format))
    assert (loaded.width, loaded.height, loaded.format, loaded.bit_depth) == (7, 5, fmt, 8)
    assert loaded.rgb.dtype == np.float32 and loaded.rgb.shape == (5, 7, 3)
    assert loaded.alpha is None and not loaded.grayscale
    np.testing.assert_array_equal(as_u8(loaded.rgb), pixels)

    data = encode_image(loaded.rgb, None, fmt)
    with Image.open(io.BytesIO(data)) as written:
        assert (written.format, written.mode, written.size) == (pil_format, "RGB", (7, 5))
        np.testing.assert_array_equal(np.asarray(written), pixels)


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpg", "JPEG"), ("webp", "WEBP")])
def test_lossy_round_trip_is_close(tmp_path: Path, fmt: str, pil_format: str) -> None:
    pixels = smooth_rgb(24, 32)
    data = encode_image(pixels / 255.0, None, fmt)
    with Image.open(io.BytesIO(data)) as written:
        assert (written.format, written.mode, written.size) == (pil_format, "RGB", (32, 24))
    loaded = read_image(data)
    assert loaded.format == ("jpeg" if fmt == "jpg" else "webp")
    assert loaded.rgb.shape == (24, 32, 3)
    assert np.abs(loaded.rgb - pixels / 255.0).mean() < 0.01
    assert np.abs(loaded.rgb - pixels / 255.0).max() < 0.1


def test_quality_changes_lossy_size() -> None:
    planes = random_u8(32, 32, 3) / 255.0
    assert len(encode_image(planes, None, "jpg", quality=20)) < len(encode_image(planes, None, "jpg"))
    assert len(encode_image(planes, None, "webp", quality=20)) < len(encode_image(planes, None, "webp"))


def test_encode_clamps_out_of_range_values() -> None:
    planes = np.array([[[-0.5, 1.5, 0.5]]], np.float32)
    with Image.open(io.BytesIO(encode_image(planes, None, "png"))) as written:
        assert np.asarray(written).tolist() == [[[0, 255, 128]]]


@pytest.mark.parametrize(("fmt", "exact"), [("png", True), ("tiff", True), ("webp", False)])
def test_alpha_round_trip(fmt: str, exact: bool) -> None:
    pixels = random_u8(6, 5, 4)
    pixels[0, :4, 3] = [0, 1, 128, 255]
    data = encode_image(pixels[..., :3] / 255.0, pixels[..., 3] / 255.0, fmt)
    with Image.open(io.BytesIO(data)) as written:
        assert written.mode == "RGBA"
    loaded = read_image(data)
    assert loaded.alpha is not None and loaded.alpha.shape == (6, 5)
    if exact:
        np.testing.assert_array_equal(as_u8(loaded.alpha), pixels[..., 3])
        np.testing.assert_array_equal(as_u8(loaded.rgb), pixels[..., :3])
    else:  # WebP keeps alpha losslessly, colour lossily
        np.testing.assert_array_equal(as_u8(loaded.alpha), pixels[..., 3])


def test_jpg_refuses_alpha_at_encode() -> None:
    with pytest.raises(ValueError, match="alpha"):
        encode_image(np.zeros((2, 2, 3)), np.ones((2, 2)), "jpg")


# --- input modes -------------------------------------------------------------------------------------

def test_reads_bmp(tmp_path: Path) -> None:
    pixels = random_u8(4, 6, 3)
    loaded = read_image(save(Image.fromarray(pixels), tmp_path / "a.bmp", "BMP"))
    assert (loaded.format, loaded.bit_depth, loaded.grayscale, loaded.alpha) == ("bmp", 8, False, None)
    np.testing.assert_array_equal(as_u8(loaded.rgb), pixels)


def test_rgba_png_keeps_alpha_values(tmp_path: Path) -> None:
    pixels = random_u8(3, 4, 4)
    pixels[0, :, 3] = [0, 1, 128, 255]
    loaded = read_image(save(Image.fromarray(pixels), tmp_path / "a.png", "PNG"))
    assert loaded.alpha.dtype == np.float32 and loaded.alpha.flags.c_contiguous
    np.testing.assert_array_equal(as_u8(loaded.alpha), pixels[..., 3])
    np.testing.assert_array_equal(as_u8(loaded.rgb), pixels[..., :3])


def test_la_png_is_grayscale_with_alpha(tmp_path: Path) -> None:
    pixels = random_u8(3, 4, 2)
    loaded = read_image(save(Image.fromarray(pixels), tmp_path / "a.png", "PNG"))
    assert loaded.grayscale and loaded.bit_depth == 8
    for channel in range(3):
        np.testing.assert_array_equal(as_u8(loaded.rgb[..., channel]), pixels[..., 0])
    np.testing.assert_array_equal(as_u8(loaded.alpha), pixels[..., 1])
    data = encode_image(loaded.rgb, loaded.alpha, "png", grayscale=True)
    with Image.open(io.BytesIO(data)) as written:
        assert written.mode == "LA"
        np.testing.assert_array_equal(np.asarray(written), pixels)


def test_palette_with_transparency_gives_alpha(tmp_path: Path) -> None:
    palette_image = Image.new("P", (3, 2))
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    palette_image.putdata([0, 1, 2, 2, 1, 0])
    path = save(palette_image, tmp_path / "p.png", "PNG", transparency=1)
    loaded = read_image(path)
    assert not loaded.grayscale
    np.testing.assert_array_equal(as_u8(loaded.alpha), [[255, 0, 255], [255, 0, 255]])
    np.testing.assert_array_equal(as_u8(loaded.rgb[0]), [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_palette_gif_without_transparency_is_expanded(tmp_path: Path) -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    palette_image.putdata([1, 0])
    loaded = read_image(save(palette_image, tmp_path / "p.gif", "GIF"))
    assert loaded.alpha is None and loaded.format == "gif"
    np.testing.assert_array_equal(as_u8(loaded.rgb), [[[200, 100, 50], [10, 20, 30]]])


def test_cmyk_is_converted_to_rgb_and_drops_the_cmyk_profile(tmp_path: Path, srgb_profile: bytes) -> None:
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255]]], np.uint8)
    cmyk_profile = srgb_profile[:16] + b"CMYK" + srgb_profile[20:]  # only the colour-space field matters here
    path = save(Image.frombytes("CMYK", (4, 1), cmyk.tobytes()), tmp_path / "c.tif", "TIFF",
                icc_profile=cmyk_profile)
    loaded = read_image(path)
    assert not loaded.grayscale and loaded.icc_profile is None
    np.testing.assert_array_equal(as_u8(loaded.rgb), [[[255, 255, 255], [0, 255, 255], [255, 0, 255], [0, 0, 0]]])


def test_bilevel_reads_as_grayscale(tmp_path: Path) -> None:
    bilevel = Image.new("1", (3, 1))
    bilevel.putdata([0, 1, 0])
    loaded = read_image(save(bilevel, tmp_path / "b.png", "PNG"))
    assert loaded.grayscale
    np.testing.assert_array_equal(as_u8(loaded.rgb[..., 0]), [[0, 255, 0]])


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpg"])
def test_grayscale_stays_grayscale(tmp_path: Path, fmt: str) -> None:
    pixels = random_u8(4, 5, 1)[..., 0]
    loaded = read_image(save(Image.fromarray(pixels), tmp_path / "g.png", "PNG"))
    assert loaded.grayscale and loaded.rgb.shape == (4, 5, 3)
    with Image.open(io.BytesIO(encode_image(loaded.rgb, None, fmt, grayscale=True))) as written:
        assert written.mode == "L"
        if fmt != "jpg":
            np.testing.assert_array_equal(np.asarray(written), pixels)


def test_grayscale_encoding_uses_bt601_luma() -> None:
    planes = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
    with Image.open(io.BytesIO(encode_image(planes, None, "png", grayscale=True))) as written:
        assert np.asarray(written).tolist() == [[76, 150, 29]]  # 0.299, 0.587, 0.114 of 255


# --- 16 bits -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("tiff", "TIFF")])
def test_16bit_grayscale_round_trip_is_exact(tmp_path: Path, fmt: str, pil_format: str) -> None:
    values = random_u16(3, 4, 1)[..., 0]
    values[0, :4] = [0, 1, 257, 65535]
    loaded = read_image(save(Image.fromarray(values), tmp_path / "g16", pil_format))
    assert loaded.grayscale and loaded.bit_depth == 16
    np.testing.assert_array_equal(as_u16(loaded.rgb[..., 1]), values)
    data = encode_image(loaded.rgb, None, fmt, grayscale=True, bit_depth=16)
    with Image.open(io.BytesIO(data)) as written:
        assert written.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(written), values)


@pytest.mark.parametrize(("fmt", "channels"), [("png", 3), ("png", 4), ("tiff", 3), ("tiff", 4)])
def test_16bit_colour_round_trip_is_exact(tmp_path: Path, fmt: str, channels: int) -> None:
    bgr = random_u16(5, 6, channels)
    ok, encoded = cv2.imencode(".png" if fmt == "png" else ".tif", bgr)
    assert ok
    loaded = read_image(encoded.tobytes())
    assert loaded.bit_depth == 16 and not loaded.grayscale
    np.testing.assert_array_equal(as_u16(loaded.rgb), bgr[..., 2::-1])
    if channels == 4:
        np.testing.assert_array_equal(as_u16(loaded.alpha), bgr[..., 3])

    data = encode_image(loaded.rgb, loaded.alpha, fmt, bit_depth=16)
    written = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, bgr)


def test_16bit_tiff_with_alpha_declares_extra_samples() -> None:
    data = encode_image(np.zeros((2, 2, 3)), np.ones((2, 2)), "tiff", bit_depth=16)
    with Image.open(io.BytesIO(data)) as written:
        assert written.tag_v2.get(338) in (2, (2,))  # unassociated alpha


def test_16bit_grey_alpha_png_keeps_16_bits() -> None:
    grey_alpha = random_u16(2, 3, 2)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in grey_alpha)
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 16, 4, 0, 0, 0))
           + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    loaded = read_image(png)
    assert loaded.grayscale and loaded.bit_depth == 16
    np.testing.assert_array_equal(as_u16(loaded.rgb[..., 2]), grey_alpha[..., 0])
    np.testing.assert_array_equal(as_u16(loaded.alpha), grey_alpha[..., 1])
    # written as 16-bit RGBA (OpenCV has no grey+alpha), still exact
    data = encode_image(loaded.rgb, loaded.alpha, "png", grayscale=True, bit_depth=16)
    written = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written[..., 0], grey_alpha[..., 0])
    np.testing.assert_array_equal(written[..., 3], grey_alpha[..., 1])


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_16bit_request_drops_to_8_bits_for_jpg_and_webp(fmt: str) -> None:
    data = encode_image(np.full((2, 2, 3), 0.5), None, fmt, bit_depth=16)
    with Image.open(io.BytesIO(data)) as written:
        assert written.mode == "RGB"


# --- EXIF orientation --------------------------------------------------------------------------------

def test_orientation_6_and_8_by_hand(tmp_path: Path) -> None:
    stored = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)  # 2 rows x 3 columns
    upright = {  # what a viewer shows for each orientation
        6: [[4, 1], [5, 2], [6, 3]],  # rotate 90 degrees clockwise
        8: [[3, 6], [2, 5], [1, 4]],  # rotate 90 degrees counter-clockwise
        3: [[6, 5, 4], [3, 2, 1]],
    }
    for orientation, expected in upright.items():
        path = save(Image.fromarray(stored), tmp_path / f"o{orientation}.png", "PNG",
                    exif=exif_block(orientation))
        loaded = read_image(path)
        np.testing.assert_array_equal(as_u8(loaded.rgb[..., 0]), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("pil_format", "suffix"), [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_orientation_matches_pillow_and_is_reset(tmp_path: Path, orientation: int, pil_format: str,
                                                 suffix: str) -> None:
    pixels = random_u8(4, 6, 4)
    pixels[..., 3] = RNG.integers(0, 256, (4, 6))
    source = Image.fromarray(pixels if pil_format != "JPEG" else pixels[..., :3])
    options = {"lossless": True} if pil_format == "WEBP" else {}
    path = save(source, tmp_path / f"o.{suffix}", pil_format, exif=exif_block(orientation), **options)
    with Image.open(path) as reference:
        expected = np.asarray(ImageOps.exif_transpose(reference))
    loaded = read_image(path)
    np.testing.assert_array_equal(as_u8(loaded.rgb), expected[..., :3])
    if pil_format != "JPEG":
        np.testing.assert_array_equal(as_u8(loaded.alpha), expected[..., 3])
    tags = exif_tags(loaded.exif)
    assert tags.get(0x0112) == 1
    assert tags.get(0x010F) == "TestCam"
    assert tags.get_ifd(0x8769).get(0x9003) == "2020:01:02 03:04:05"


def test_orientation_on_16bit_colour_png() -> None:
    bgra = random_u16(3, 5, 4)
    ok, encoded = cv2.imencode(".png", bgra)
    png = png_insert(encoded.tobytes(), png_chunk(b"eXIf", exif_block(6)[6:]))
    loaded = read_image(png)
    assert (loaded.height, loaded.width, loaded.bit_depth) == (5, 3, 16)
    with Image.open(io.BytesIO(png)) as reference:  # Pillow keeps the high byte of each 16-bit sample
        expected8 = np.asarray(ImageOps.exif_transpose(reference))
    np.testing.assert_array_equal(as_u16(loaded.rgb) >> 8, expected8[..., :3])
    np.testing.assert_array_equal(as_u16(loaded.alpha) >> 8, expected8[..., 3])
    np.testing.assert_array_equal(as_u16(loaded.rgb[0, 0]), bgra[2, 0, 2::-1])  # bottom-left goes to top-left
    assert exif_tags(loaded.exif).get(0x0112) == 1


def test_orientation_on_16bit_grey_tiff_is_applied_once(tmp_path: Path) -> None:
    stored = np.array([[1000, 2000, 3000], [4000, 5000, 6000]], np.uint16)
    path = save(Image.fromarray(stored), tmp_path / "o.tif", "TIFF", tiffinfo={0x0112: 6})
    loaded = read_image(path)
    np.testing.assert_array_equal(as_u16(loaded.rgb[..., 0]), [[4000, 1000], [5000, 2000], [6000, 3000]])


def test_exif_without_orientation_is_kept_verbatim(tmp_path: Path) -> None:
    block = exif_block()
    path = save(Image.fromarray(random_u8(2, 2, 3)), tmp_path / "e.jpg", "JPEG", exif=block)
    assert read_image(path).exif == block


def test_no_exif_gives_none(tmp_path: Path) -> None:
    assert read_image(save(Image.fromarray(random_u8(2, 2, 3)), tmp_path / "e.png", "PNG")).exif is None


# --- ICC profile and EXIF carried --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_icc_profile_is_carried(tmp_path: Path, srgb_profile: bytes, fmt: str) -> None:
    path = save(Image.fromarray(random_u8(4, 4, 3)), tmp_path / "i.png", "PNG", icc_profile=srgb_profile)
    loaded = read_image(path)
    assert loaded.icc_profile == srgb_profile
    data = encode_image(loaded.rgb, None, fmt, icc_profile=loaded.icc_profile)
    with Image.open(io.BytesIO(data)) as written:
        assert written.info.get("icc_profile") == srgb_profile
    assert read_image(data).icc_profile == srgb_profile


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_icc_profile_is_carried_in_16bit_colour(srgb_profile: bytes, fmt: str) -> None:
    rgb = random_u16(3, 4, 3) / 65535.0
    data = encode_image(rgb, None, fmt, bit_depth=16, icc_profile=srgb_profile)
    with Image.open(io.BytesIO(data)) as written:  # an independent reader sees the profile
        assert written.info.get("icc_profile") == srgb_profile
    loaded = read_image(data)
    assert loaded.icc_profile == srgb_profile and loaded.bit_depth == 16
    np.testing.assert_array_equal(as_u16(loaded.rgb), as_u16(rgb))


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_exif_is_carried(fmt: str) -> None:
    data = encode_image(np.full((2, 3, 3), 0.25), None, fmt, exif=exif_block(1))
    tags = exif_tags(read_image(data).exif)
    assert tags.get(0x010F) == "TestCam"
    assert tags.get_ifd(0x8769).get(0x9003) == "2020:01:02 03:04:05"


def test_exif_is_carried_in_16bit_png() -> None:
    data = encode_image(np.full((2, 3, 3), 0.25), None, "png", bit_depth=16, exif=exif_block(1, make="Cam16"))
    assert exif_tags(read_image(data).exif).get(0x010F) == "Cam16"


def test_exif_goes_into_the_tiff_ifd_without_breaking_its_layout() -> None:
    exif = Image.Exif()
    exif.load(exif_block(1))
    exif[0x0100] = 4000  # an ImageWidth from the camera file must not replace the real one
    data = encode_image(np.full((2, 3, 3), 0.25), None, "tiff", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as written:
        assert written.size == (3, 2)
        assert written.tag_v2.get(0x010F) == "TestCam"
        np.testing.assert_array_equal(np.asarray(written), np.full((2, 3, 3), 64))


def test_16bit_colour_tiff_does_not_carry_exif() -> None:
    """Documented limitation: OpenCV writes the 16-bit colour TIFF and EXIF is not added to it."""
    data = encode_image(np.full((2, 3, 3), 0.25), None, "tiff", bit_depth=16, exif=exif_block(1))
    with Image.open(io.BytesIO(data)) as written:
        assert 0x010F not in written.tag_v2


SOFTWARE = "upscale 0.1.0; model flow_x4 x4; fp32; seed 3; tau 0.8"


def software_tag(data: bytes) -> str | None:
    """The Software tag as an independent reader (Pillow) finds it, in any format."""
    with Image.open(io.BytesIO(data)) as written:
        return written.getexif().get(0x0131)


@pytest.mark.parametrize("fmt,bit_depth", [("png", 8), ("jpg", 8), ("webp", 8), ("tiff", 8), ("png", 16),
                                           ("tiff", 16)])
def test_software_tag_records_what_made_the_pixels(fmt: str, bit_depth: int, tmp_path: Path) -> None:
    rgb = random_u8(3, 5, 3).astype(np.float32) / 255
    data = encode_image(rgb, None, fmt, bit_depth=bit_depth, software=SOFTWARE)
    assert software_tag(data) == SOFTWARE
    (tmp_path / f"o.{fmt}").write_bytes(data)
    assert image_io.software_tag(tmp_path / f"o.{fmt}") == SOFTWARE  # what --skip-existing reads back
    assert software_tag(encode_image(rgb, None, fmt, bit_depth=bit_depth)) is None
    if fmt in ("png", "tiff"):  # lossless: the tag changes nothing else
        np.testing.assert_array_equal(read_image(data).rgb, read_image(encode_image(rgb, None, fmt,
                                                                                    bit_depth=bit_depth)).rgb)


@pytest.mark.parametrize("fmt", ["jpg", "png", "tiff"])
def test_software_tag_replaces_the_sources_and_keeps_its_other_tags(fmt: str) -> None:
    exif = Image.Exif()
    exif.load(exif_block(1))
    exif[0x0131] = "CameraFirmware 1.0"
    data = encode_image(np.full((2, 3, 3), 0.25), None, fmt, exif=exif.tobytes(), software="upscale \u00e9t\u00e9")
    with Image.open(io.BytesIO(data)) as written:
        tags = written.getexif()
        assert tags.get(0x0131) == "upscale ?t?"  # ASCII only, as the tag's type demands
        assert tags.get(0x010F) == "TestCam"
        if fmt != "tiff":  # the TIFF path keeps the IFD0 tags only (see test_exif_goes_into_the_tiff_ifd...)
            assert tags.get_ifd(0x8769).get(0x9003) == "2020:01:02 03:04:05"


def test_software_tag_gives_way_to_a_full_jpeg_exif_segment_and_to_unreadable_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010E] = "d" * 65_440  # an ImageDescription that leaves too little room in the APP1 segment
    block = exif.tobytes()
    assert len(block) <= 65_533
    data = encode_image(np.full((2, 3, 3), 0.25), None, "jpg", exif=block, software=SOFTWARE)
    assert software_tag(data) is None and read_image(data).exif == block
    assert software_tag(encode_image(np.full((2, 3, 3), 0.25), None, "png", exif=block, software=SOFTWARE)) == SOFTWARE
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert image_io.software_tag(tmp_path / "junk.png") is None
    unreadable = b"Exif\x00\x00not a tiff block"
    data = encode_image(np.full((2, 3, 3), 0.25), None, "png", exif=unreadable, software=SOFTWARE)
    (tmp_path / "odd.png").write_bytes(data)
    assert image_io.software_tag(tmp_path / "odd.png") is None  # the encoder carries what it cannot parse as it came
    read = read_image(data)  # but reading drops it (#27), so an upscale of this file gets its tag
    assert read.exif is None and read.notes == ("its EXIF block is corrupt and was dropped (the pixels are fine)",)


def test_grey_image_drops_an_rgb_profile(tmp_path: Path, srgb_profile: bytes) -> None:
    path = save(Image.fromarray(random_u8(2, 2, 1)[..., 0]), tmp_path / "g.png", "PNG",
                icc_profile=srgb_profile)
    assert read_image(path).icc_profile is None


# --- refusals ----------------------------------------------------------------------------------------

def assert_read_error(source, problem: str, shown: str, **kwargs) -> None:
    """read_image fails with exactly `shown: problem` on one line."""
    with pytest.raises(ImageReadError) as caught:
        read_image(source, **kwargs)
    assert caught.value.problem.startswith(problem)
    assert str(caught.value).startswith(f"{shown}: {problem}")
    assert "\n" not in str(caught.value)


def test_animated_gif_is_refused(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in ("red", "green", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert_read_error(path, "animated image (3 frames): only still images are supported", str(path))


def test_multipage_tiff_is_refused(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (4, 4)) for _ in range(2)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert_read_error(path, "animated image (2 frames)", str(path))


def test_too_many_pixels_is_refused_from_the_header(tmp_path: Path) -> None:
    # A 12000 x 12000 header with no valid pixel data: refusal must come before decoding.
    header = struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"x")
                     + png_chunk(b"IEND", b""))
    assert_read_error(path, "image is 12000 x 12000 = 144 megapixels, above the limit of 100 "
                            "(raise it with --max-pixels)", str(path))
    assert_read_error(path, "truncated or corrupt image data", str(path), max_pixels=200_000_000)


def test_small_max_pixels_is_refused(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_u8(10, 10, 3)), tmp_path / "a.png", "PNG")
    assert_read_error(path, "image is 10 x 10", str(path), max_pixels=99)
    assert read_image(path, max_pixels=100).width == 10


def test_pillow_limit_does_not_apply_and_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow alone would refuse 25 pixels (> 2 x 10)
    path = save(Image.fromarray(random_u8(5, 5, 3)), tmp_path / "a.png", "PNG")
    assert read_image(path).width == 5
    assert Image.MAX_IMAGE_PIXELS == 10


def test_missing_file(tmp_path: Path) -> None:
    assert_read_error(tmp_path / "nope.png", "file not found", str(tmp_path / "nope.png"))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert_read_error(tmp_path / "empty.png", "empty file", str(tmp_path / "empty.png"))


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, not an image\n")
    assert_read_error(tmp_path / "notes.png", "not an image file (or an unsupported format)",
                      str(tmp_path / "notes.png"))


def test_folder(tmp_path: Path) -> None:
    assert_read_error(tmp_path, "is a folder, not a file", str(tmp_path))


@pytest.mark.parametrize(("pil_format", "keep"), [("PNG", 0.5), ("JPEG", 0.5), ("PNG", 0.02)])
def test_truncated_image(tmp_path: Path, pil_format: str, keep: float) -> None:
    whole = io.BytesIO()
    Image.fromarray(random_u8(48, 48, 3)).save(whole, pil_format)
    path = tmp_path / "cut.img"
    path.write_bytes(whole.getvalue()[: int(len(whole.getvalue()) * keep)])
    assert_read_error(path, "truncated or corrupt image data", str(path))


def test_truncated_16bit_png() -> None:
    ok, encoded = cv2.imencode(".png", random_u16(32, 32, 3))
    assert_read_error(encoded.tobytes()[: encoded.size // 2], "truncated or corrupt image data", "<stdin>",
                      name="<stdin>")


def test_bytes_source_uses_name() -> None:
    assert_read_error(b"plain text", "not an image file", "<stdin>", name="<stdin>")
    assert_read_error(b"", "empty file", "<bytes>")


def test_read_closes_the_file(tmp_path: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    path = save(Image.fromarray(random_u8(4, 4, 3)), tmp_path / "a.png", "PNG")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        read_image(path)
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "a.png", max_pixels=1)
    assert len(os.listdir("/proc/self/fd")) == before


def test_loaded_image_properties() -> None:
    image = LoadedImage(np.zeros((2, 5, 3), np.float32), None, False, 8, "png", None, None)
    assert (image.width, image.height) == (5, 2)


# --- formats -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("requested", "source", "alpha", "expected"), [
    ("same", "jpeg", False, "jpg"),
    ("same", "png", False, "png"),
    ("same", "webp", True, "webp"),
    ("same", "tiff", False, "tiff"),
    ("same", "bmp", False, "png"),
    ("same", "gif", True, "png"),
    ("same", "jpeg", True, "png"),
    ("jpg", "png", False, "jpg"),
    ("jpg", "png", True, "png"),
    ("webp", "jpeg", False, "webp"),
    ("tiff", "png", True, "tiff"),
    ("png", "jpeg", False, "png"),
])
def test_output_format(requested: str, source: str, alpha: bool, expected: str) -> None:
    assert output_format(requested, source, alpha) == expected


def test_output_format_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        output_format("gif", "png", False)


def test_extension() -> None:
    assert [extension(fmt) for fmt in ("png", "jpg", "webp", "tiff")] == [".png", ".jpg", ".webp", ".tif"]
    with pytest.raises(ValueError):
        extension("bmp")


# --- write_image -------------------------------------------------------------------------------------

def leftovers(folder: Path) -> list[str]:
    """Temporary files left in a folder."""
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_write_creates_parents_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    write_image(target, b"new data")
    assert target.read_bytes() == b"new data"
    assert leftovers(target.parent) == []


def test_write_permissions_follow_umask(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    umask = os.umask(0o022)
    try:
        write_image(tmp_path / "out.png", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"original")
    with pytest.raises(ImageWriteError) as caught:
        write_image(target, b"new data")
    assert str(caught.value) == f"{target}: exists (use --overwrite or --skip-existing)"
    assert target.read_bytes() == b"original"
    assert leftovers(tmp_path) == []


def test_write_refuses_a_target_that_appears_during_the_write(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    real_fsync = os.fsync

    def fsync_then_race(fd: int) -> None:
        real_fsync(fd)
        target.write_bytes(b"other process")

    monkeypatch.setattr(os, "fsync", fsync_then_race)
    with pytest.raises(ImageWriteError, match="exists"):
        write_image(target, b"new data")
    assert target.read_bytes() == b"other process"
    assert leftovers(tmp_path) == []


def test_write_overwrites_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"original")
    write_image(target, b"new data", overwrite=True)
    assert target.read_bytes() == b"new data"
    assert leftovers(tmp_path) == []


def test_failed_replace_keeps_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"original")

    def broken_replace(*_args) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ImageWriteError, match="No space left on device"):
        write_image(target, b"new data", overwrite=True)
    assert target.read_bytes() == b"original"
    assert leftovers(tmp_path) == []


def test_without_hard_links_the_write_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*_args) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write_image(tmp_path / "out.png", b"new data")
    assert (tmp_path / "out.png").read_bytes() == b"new data"
    assert leftovers(tmp_path) == []


def test_failure_without_hard_links_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.atomic as atomic

    def fail(*_args) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "link", fail)
    monkeypatch.setattr(atomic, "rename_no_replace", fail)
    with pytest.raises(ImageWriteError, match="Input/output error"):
        write_image(tmp_path / "out.png", b"new data")
    assert os.listdir(tmp_path) == []


def test_interrupt_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(_fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", b"new data")
    assert os.listdir(tmp_path) == []


def test_encode_then_write_then_read(tmp_path: Path) -> None:
    pixels = random_u8(3, 3, 3)
    target = tmp_path / f"out{extension('png')}"
    write_image(target, encode_image(pixels / 255.0, None, "png"))
    np.testing.assert_array_equal(as_u8(read_image(target).rgb), pixels)


# --- lanczos_resize ----------------------------------------------------------------------------------

def test_resize_shapes_and_dtype() -> None:
    assert lanczos_resize(np.zeros((4, 6), np.float32), 9, 5).shape == (5, 9)
    resized = lanczos_resize(np.zeros((4, 6, 3)), 3, 2)
    assert resized.shape == (2, 3, 3) and resized.dtype == np.float32


def test_resize_keeps_a_constant_plane() -> None:
    plane = np.full((7, 9), 0.123456789, np.float32)
    for width, height in [(20, 15), (4, 3), (9, 7)]:
        np.testing.assert_allclose(lanczos_resize(plane, width, height), 0.123456789, atol=1e-6)


def test_resize_keeps_sub_8bit_detail() -> None:
    gradient = np.tile(0.5 + np.arange(64, dtype=np.float32) / 65535, (4, 1))  # spans 1/4 of one 8-bit step
    resized = lanczos_resize(gradient, 128, 4)
    assert len(np.unique(as_u16(resized))) >= 60
    assert np.all(np.diff(resized[2, 8:-8]) >= 0)
    np.testing.assert_allclose(resized.mean(), gradient.mean(), atol=2e-6)


def test_resize_matches_pillow_lanczos_on_8bit_data() -> None:
    pixels = random_u8(12, 10, 1)[..., 0]
    expected = np.asarray(Image.fromarray(pixels).resize((5, 7), Image.Resampling.LANCZOS)).astype(np.float32)
    resized = lanczos_resize(pixels / 255.0, 5, 7)
    assert np.abs(np.clip(resized, 0, 1) * 255 - expected).max() <= 1.0


def test_module_has_no_torch_import() -> None:
    source = Path(image_io.__file__).read_text()
    assert "import torch" not in source
