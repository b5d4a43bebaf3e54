"""Reading and writing image files as float planes, keeping bit depth, alpha, colour profile and EXIF.

Pillow does the work except for 16-bit colour PNG/TIFF, which it can only decode to 8 bits: those go
through OpenCV (imported lazily, only on that path). Pixels are returned upright: the EXIF orientation
is applied to the arrays and reset to 1 in the EXIF block that is carried to the output, so viewers do
not rotate the result a second time.

Pillow's own decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) is lifted only while `read_image`
opens and decodes a file, and restored afterwards, so `max_pixels` is the single limit that applies.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .atomic import write_atomically
from .errors import ImageReadError, ImageWriteError, StopBatch

MAX_PIXELS_DEFAULT = 100_000_000

_INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)
_CORRUPT = "truncated or corrupt image data"
_NOT_IMAGE = "not an image file (or an unsupported format)"
_EXISTS = "exists (use --overwrite or --skip-existing)"
_MAX_BYTES_PER_PIXEL = 16  # float32 RGBA, uncompressed
_METADATA_ALLOWANCE = 64 << 20  # EXIF, ICC profiles, previews and thumbnails beside the pixels
_READ_BLOCK = 1 << 20
# libjpeg warnings that mean pixels were made up (the scan ran out or could not be decoded); others, such as
# "extraneous bytes before marker", leave every pixel decoded and are not refused.
_JPEG_DATA_LOST = ("premature end", "bad huffman", "instead of rst", "corrupt jpeg data: found marker")
_HEAD_BYTES = 1 << 16  # where headers end in all but files with huge metadata before the frame header

_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})

_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112
_ICC_TAG = 34675
_EXTRA_SAMPLES_TAG = 338
_SOFTWARE_TAG = 0x0131
_EMPTY_TIFF = b"II*\x00" + struct.pack("<IHI", 8, 0, 0)  # a little-endian header and an IFD with no entries
_JPEG_EXIF_LIMIT = 65533  # the most a JPEG APP1 segment holds: its 16-bit length counts its own 2 bytes
# TIFF tags that describe a file's own pixel layout: an EXIF block from another file must not override them.
_TIFF_LAYOUT_TAGS = (254, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325,
                     338, 339, 513, 514, 530, _ICC_TAG)

_LUMA_BT601 = np.array([0.299, 0.587, 0.114], np.float32)
_DEFAULT_QUALITY = {"jpg": 95, "webp": 90}
# zlib level of PNG outputs. A 3712 x 4096 upscaled photo: level 6 (the libraries' default) 5.96 s, 14.2 MiB;
# level 3 1.88 s, 15.2 MiB; level 1 1.16 s, 16.3 MiB (Pillow, AMD EPYC; OpenCV alike). Measured again with
# Pillow 13 (zlib-ng): level 3 1.46 s, level 2 1.00 s (15.7 MiB), level 1 0.89 s; on 1024 px outputs 105 / 72 /
# 66 ms. 2 takes two thirds of level 3's time for 3% more bytes, which matters where encoding shares the
# cores with the next image's upscale; a lossless recompressor can take the bytes back later where they matter.
PNG_COMPRESSION = 2
_PILLOW_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}
_EXTENSIONS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif"}
_SAME_FORMAT = {"png": "png", "jpeg": "jpg", "webp": "webp", "tiff": "tiff"}

# Each EXIF orientation as the numpy operation that makes the stored (H, W, ...) array upright.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass
class LoadedImage:
    """A decoded still image as float planes in [0, 1], upright, with what is needed to write it back alike."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    bit_depth: int
    format: str
    icc_profile: bytes | None
    exif: bytes | None
    notes: tuple[str, ...] = ()  # what was wrong but harmless (a corrupt EXIF block dropped), one line each

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.rgb.shape[0]


# --- reading -----------------------------------------------------------------------------------------

def read_image(source: str | os.PathLike | bytes | BinaryIO, max_pixels: int = MAX_PIXELS_DEFAULT,
               name: str | None = None) -> LoadedImage:
    """Decode a file (its raw bytes, or a binary stream such as stdin) into an upright `LoadedImage`; every
    failure is one `ImageReadError`."""
    if name is not None:
        label: object = name
    else:
        label = "<bytes>" if isinstance(source, (bytes, bytearray)) else (
            "<stream>" if hasattr(source, "read") else os.fspath(source))
    data = _read_source(source, label, max_pixels)
    with warnings.catch_warnings(record=True) as caught, _pillow_limit_lifted():
        warnings.simplefilter("always")
        with _open(data, label) as img:
            _check_size(img, max_pixels, label)
            _check_still(img, label)
            image = _decode(img, data, label)
    said = [f"decoder: {str(w.message).strip()}" for w in caught if not isinstance(w.message, DeprecationWarning)
            and not (image.notes and "EXIF" in str(w.message))]  # a dropped EXIF block is said once
    return replace(image, notes=image.notes + tuple(dict.fromkeys(said)))


def software_tag(path: str | os.PathLike) -> str | None:
    """The Software tag of an existing image file (what `encode_image(software=...)` wrote), or None when it
    has none or cannot be opened. Reads the header and metadata, never the pixels: PNG chunks are walked
    up to the image data here, because Pillow decodes a whole PNG to look for EXIF after it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head == _SIGNATURES[0]:
                exif = _png_exif_before_data(handle)
                tags = Image.Exif()
                if exif:
                    tags.load(exif)
            else:
                with _pillow_limit_lifted(), Image.open(path) as img:  # opening reads headers, not pixels
                    tags = img.getexif()
        value = tags.get(_SOFTWARE_TAG)
    except _DECODE_ERRORS:
        return None
    return value if isinstance(value, str) else None


def _png_exif_before_data(handle: Any) -> bytes | None:
    """The eXIf chunk of a PNG opened at its first chunk, if it comes before the image data (where we put it)."""
    while True:
        header = handle.read(8)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header)
        if kind in (b"IDAT", b"IEND"):
            return None
        payload = handle.read(length)
        handle.seek(4, os.SEEK_CUR)  # CRC
        if kind == b"eXIf":
            return payload


def _read_source(source: str | os.PathLike | bytes | BinaryIO, label: object, max_pixels: int) -> bytes:
    """The whole input as bytes, read at once (the file is closed before decoding starts), but never more
    than an image of `max_pixels` can take (`byte_limit`), and refused after its first block when that
    block is no image or its header already declares too many pixels: a huge file, an endless stream or
    `/dev/zero` on stdin cannot fill memory."""
    limit = byte_limit(max_pixels)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        if len(data) > limit:
            raise ImageReadError(label, _too_many_bytes(f"{len(data)} bytes", limit))
    elif hasattr(source, "read"):
        data = _read_bounded(source, label, limit, max_pixels)
    else:
        try:
            with open(source, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > limit:
                    raise ImageReadError(label, _too_many_bytes(f"{size} bytes", limit))
                data = _read_bounded(file, label, limit, max_pixels)
        except FileNotFoundError:
            raise ImageReadError(label, "file not found") from None
        except IsADirectoryError:
            raise ImageReadError(label, "is a folder, not a file") from None
        except OSError as error:
            raise ImageReadError(label, f"cannot read: {error.strerror or error}") from error
    if not data:
        raise ImageReadError(label, "empty file")
    return data


def byte_limit(max_pixels: int) -> int:
    """The most bytes an input of `max_pixels` pixels may have: float32 RGBA uncompressed (the most any
    supported format stores per pixel) plus room for metadata and previews."""
    return max_pixels * _MAX_BYTES_PER_PIXEL + _METADATA_ALLOWANCE


def _too_many_bytes(size: str, limit: int) -> str:
    return f"{size}: more than any image within the pixel limit takes ({limit} bytes; raise it with --max-pixels)"


def _read_bounded(stream: BinaryIO, label: object, limit: int, max_pixels: int) -> bytes:
    """Read `stream` to its end in blocks; its first `_HEAD_BYTES` (or all of it, if shorter) are checked
    by `_check_head` as soon as they are in."""
    blocks: list[bytes] = []
    total, checked = 0, False
    while True:
        block = stream.read(min(_READ_BLOCK, limit + 1 - total))
        if block:
            blocks.append(block)
            total += len(block)
        if not checked and (total >= _HEAD_BYTES or not block) and total:
            _check_head(b"".join(blocks), label, max_pixels)
            checked = True
        if not block:
            return b"".join(blocks)
        if total > limit:
            raise ImageReadError(label, _too_many_bytes(f"more than {limit} bytes", limit))


def _check_head(head: bytes, label: object, max_pixels: int) -> None:
    """Refuse from the first block alone: no image signature, or a header (when it fits in the block)
    that declares more than `max_pixels`."""
    if not _has_image_signature(head):
        raise ImageReadError(label, _NOT_IMAGE)
    try:
        with _pillow_limit_lifted(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the whole file is read again, and its warnings said, later
            with Image.open(io.BytesIO(head), formats=_INPUT_FORMATS) as img:
                size = img.size
    except _DECODE_ERRORS:  # the header goes on past the block: the whole file is checked later
        return
    _check_size_of(size, max_pixels, label)


_pillow_limit_lock = threading.Lock()
_pillow_limit_users = 0
_pillow_limit_saved: int | None = None


@contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Lift Pillow's MAX_IMAGE_PIXELS while decoding so max_pixels is the limit; restored after, thread-safe."""
    global _pillow_limit_users, _pillow_limit_saved
    with _pillow_limit_lock:
        if _pillow_limit_users == 0:
            _pillow_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pillow_limit_users += 1
    try:
        yield
    finally:
        with _pillow_limit_lock:
            _pillow_limit_users -= 1
            if _pillow_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit_saved


def _open(data: bytes, label: object) -> Image.Image:
    """Parse the header with Pillow, accepting only the formats we support."""
    try:
        return Image.open(io.BytesIO(data), formats=_INPUT_FORMATS)
    except UnidentifiedImageError as error:
        raise ImageReadError(label, _CORRUPT if _has_image_signature(data) else _NOT_IMAGE) from error
    except _DECODE_ERRORS as error:
        raise ImageReadError(label, _CORRUPT) from error


def _has_image_signature(data: bytes) -> bool:
    """Whether `data` starts like a supported image, so a failure to parse it means damage, not a wrong type."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _check_size(img: Image.Image, max_pixels: int, label: object) -> None:
    """Refuse images above `max_pixels` from the header alone, before any pixel is decoded."""
    _check_size_of(img.size, max_pixels, label)


def _check_size_of(size: tuple[int, int], max_pixels: int, label: object) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageReadError(
            label,
            f"image is {width} x {height} = {_megapixels(width * height)} megapixels, above the limit of "
            f"{_megapixels(max_pixels)} (raise it with --max-pixels)",
        )


def _megapixels(pixels: int) -> str:
    """A pixel count in megapixels, short."""
    return f"{pixels / 1e6:.4g}"


def _check_still(img: Image.Image, label: object) -> None:
    """Refuse animations and multi-page files; a camera MPO's extra pictures (depth maps, previews) are ignored."""
    try:
        frames = getattr(img, "n_frames", 1)  # counting walks every frame's header
    except _DECODE_ERRORS as error:
        raise ImageReadError(label, _CORRUPT) from error
    if frames > 1 and img.format != "MPO":
        raise ImageReadError(label, f"animated image ({frames} frames): only still images are supported")


def _decode(img: Image.Image, data: bytes, label: object) -> LoadedImage:
    """Decode the pixels, make them upright and gather the metadata to carry."""
    if _is_16bit_colour(img, data):
        grey_alpha_png = img.format == "PNG" and data[25] == 4
        rgb, alpha = _decode_16bit_colour(data, grey_alpha_png, label)
        grayscale, bit_depth = grey_alpha_png, 16
    else:
        if img.format in ("JPEG", "MPO"):
            _check_jpeg_scan(data, label)
        _load(img, label)
        rgb, alpha, grayscale, bit_depth = _pillow_planes(img, label)
    exif, orientation = _exif_and_orientation(img)
    notes = ()
    if exif is not None and not _exif_readable(exif):
        exif, notes = None, ("its EXIF block is corrupt and was dropped (the pixels are fine)",)
    return LoadedImage(
        rgb=_upright(rgb, orientation),
        alpha=None if alpha is None else _upright(alpha, orientation),
        grayscale=grayscale,
        bit_depth=bit_depth,
        format="jpeg" if img.format == "MPO" else img.format.lower(),
        icc_profile=_matching_profile(img.info.get("icc_profile"), grayscale),
        exif=exif,
        notes=notes,
    )


def _load(img: Image.Image, label: object) -> None:
    """Decode the pixel data; damaged data becomes one `ImageReadError` (truncated files are never accepted)."""
    try:
        img.load()
    except _DECODE_ERRORS as error:
        raise ImageReadError(label, _CORRUPT) from error


def _check_jpeg_scan(data: bytes, label: object) -> None:
    """Refuse a JPEG whose scan data is truncated or corrupt. libjpeg fills what it cannot decode with grey
    and only warns, and Pillow does not pass the warning on, so the entropy-coded data is decoded once more
    by libjpeg-turbo in strict mode (simplejpeg), at 1/8 scale: every coefficient is still read, few are
    transformed. Fatal errors are left to Pillow, which reports them when it decodes."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as error:
        message = str(error)
        if any(sign in message.lower() for sign in _JPEG_DATA_LOST):
            raise ImageReadError(label, f"{_CORRUPT} ({message.strip().rstrip('.')})") from None
    missing = _unrefined_components(data)
    if missing:
        raise ImageReadError(label, f"{_CORRUPT} (a progressive JPEG whose scans end before component "
                                    f"{missing[0]} is complete: the file was cut between scans)")


def _unrefined_components(data: bytes) -> list[int]:
    """Components of a progressive JPEG some of whose 64 coefficients no scan brings to full precision
    (successive approximation Al = 0). Every encoder's progression ends complete, so a file cut between two
    scans (which libjpeg decodes without a warning, blurred) shows here. Empty for sequential JPEGs, and
    for files whose markers cannot be walked (the decoder judges those)."""
    complete: dict[int, set[int]] = {}
    progressive, position = False, 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:  # end of image
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if length < 2:
            return []  # a broken segment: the decoder judges the file
        if marker in (0xC2, 0xC6, 0xCA, 0xCE) and len(segment) >= 6:  # progressive frames
            progressive = True
            complete = {segment[6 + 3 * i]: set() for i in range(segment[5]) if 6 + 3 * i < len(segment)}
        if marker == 0xDA and segment and len(segment) >= 1 + 2 * segment[0] + 3:
            count = segment[0]
            start, end, approximation = segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count]
            if approximation & 0x0F == 0:
                for component in segment[1 : 1 + 2 * count : 2]:
                    complete.setdefault(component, set()).update(range(start, min(end, 63) + 1))
            position = _end_of_entropy_data(data, position + 2 + length)
        else:
            position += 2 + length
    if not progressive:
        return []
    return [component for component, done in complete.items() if len(done) < 64]


def _end_of_entropy_data(data: bytes, position: int) -> int:
    """Where the marker after a scan's entropy-coded data starts (stuffed 0xFF00 and RSTn are data)."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1 if following == 0xFF else 2
            continue
        return position


def _is_16bit_colour(img: Image.Image, data: bytes) -> bool:
    """Whether the file has 16-bit colour (or 16-bit grey+alpha) samples, which Pillow decodes only at 8 bits."""
    if img.format == "PNG":
        return data[24] == 16 and data[25] in (2, 4, 6)  # IHDR bit depth; colour type RGB, grey+alpha, RGBA
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, ())
        bits = bits if isinstance(bits, tuple) else (bits,)
        return 16 in bits and img.tag_v2.get(262) == 2  # BitsPerSample; PhotometricInterpretation RGB
    return False


def _decode_16bit_colour(data: bytes, grayscale: bool, label: object) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode 16-bit colour PNG/TIFF with OpenCV into float RGB (H, W, 3) and alpha planes at full precision."""
    import cv2  # only this path needs OpenCV

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # ignores EXIF orientation
    if pixels is None or pixels.dtype != np.uint16:
        raise ImageReadError(label, _CORRUPT)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    planes = _to_float(pixels, 65535)
    alpha = planes[:, :, -1] if planes.shape[2] in (2, 4) else None
    colour = planes[:, :, 2::-1] if planes.shape[2] >= 3 and not grayscale else planes[:, :, :1]
    return _as_rgb(colour), alpha


def _pillow_planes(img: Image.Image, label: object) -> tuple[np.ndarray, np.ndarray | None, bool, int]:
    """Float RGB, alpha, grayscale flag and bit depth of a loaded Pillow image of any supported mode."""
    if img.mode in _GRAY16_MODES:
        raw = np.asarray(img)
        key = img.info.get("transparency")  # a tRNS grey value marks transparent pixels
        alpha = None if key is None else (raw != key).astype(np.float32)
        return _as_rgb(_to_float(np.clip(raw, 0, 65535), 65535)[:, :, None]), alpha, True, 16
    if img.mode == "F":
        raise ImageReadError(label, "unsupported pixel format (32-bit float)")
    has_alpha = "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info
    grayscale = img.mode in _GRAY_MODES
    target = ("LA" if has_alpha else "L") if grayscale else ("RGBA" if has_alpha else "RGB")
    try:
        converted = img if img.mode == target else img.convert(target)  # palette, CMYK, bilevel ...
    except ValueError as error:
        raise ImageReadError(label, f"unsupported pixel format ({img.mode})") from error
    planes = _to_float(np.asarray(converted), 255)
    if planes.ndim == 2:
        planes = planes[:, :, None]
    alpha = planes[:, :, -1] if has_alpha else None
    colour = planes[:, :, :1] if grayscale else planes[:, :, :3]
    return _as_rgb(colour), alpha, grayscale, 8


def _to_float(pixels: np.ndarray, maxval: int) -> np.ndarray:
    """Integer samples as float32 in [0, 1]."""
    planes = pixels.astype(np.float32)
    planes /= maxval
    return planes


def _as_rgb(colour: np.ndarray) -> np.ndarray:
    """An (H, W, 1) or (H, W, 3) plane stack as a contiguous (H, W, 3) array; grey is replicated."""
    return np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else np.ascontiguousarray(colour)


def _upright(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W) or (H, W, C) array as a contiguous copy; unknown values change nothing."""
    operation = _UPRIGHT.get(orientation)
    return np.ascontiguousarray(array if operation is None else operation(array))


def _exif_and_orientation(img: Image.Image) -> tuple[bytes | None, int]:
    """The EXIF block to carry (orientation reset to 1) and the orientation still to apply to the pixels.

    TIFF files keep their tags in their own first IFD instead of an EXIF block: for them only the
    orientation is honoured. Pillow's TIFF loader already rotates the pixels and drops the tag, so the
    tag is read after loading; on the OpenCV path nothing was loaded and the tag is still there.
    """
    raw = img.info.get("exif")
    if isinstance(raw, bytes) and raw:
        return _upright_exif(raw)
    tags = getattr(img, "tag_v2", None)
    return None, int(tags.get(_ORIENTATION_TAG, 1)) if tags is not None else 1


def _upright_exif(raw: bytes) -> tuple[bytes, int]:
    """The EXIF block (with its "Exif\\0\\0" header) with Orientation patched to 1 in place, and the old value.

    Patching the one entry keeps every other byte, so maker notes and offsets survive untouched.
    """
    tiff = bytearray(raw.removeprefix(_EXIF_HEADER))
    entry = _orientation_entry(tiff)
    if entry is None:
        return _EXIF_HEADER + bytes(tiff), 1
    offset, layout = entry
    (orientation,) = struct.unpack_from(layout, tiff, offset)
    struct.pack_into(layout, tiff, offset, 1)
    return _EXIF_HEADER + bytes(tiff), orientation


def _orientation_entry(tiff: bytes | bytearray) -> tuple[int, str] | None:
    """Offset and struct layout of the Orientation value in the first IFD of a TIFF-structured block, if any."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for index in range(count):
            entry = ifd + 2 + 12 * index
            tag, kind = struct.unpack_from(order + "HH", tiff, entry)
            if tag == _ORIENTATION_TAG and kind in (3, 4) and entry + 12 <= len(tiff):
                return entry + 8, order + ("H" if kind == 3 else "I")  # SHORT or LONG, held in the entry
    except struct.error:
        return None
    return None


def _exif_readable(exif: bytes) -> bool:
    """Whether an EXIF block's first IFD lies inside it and Pillow reads the block without complaint."""
    tiff = exif.removeprefix(_EXIF_HEADER)
    try:
        order = _byte_order(tiff)
        magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        if magic != 42 or ifd + 2 + 12 * count > len(tiff):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Image.Exif().load(exif)
    except (ValueError, struct.error, UserWarning, *_DECODE_ERRORS):
        return False
    return True


def _matching_profile(profile: Any, grayscale: bool) -> bytes | None:
    """The ICC profile if it describes the colour space we return (RGB or grey); a CMYK profile would be wrong."""
    if not isinstance(profile, bytes) or not profile:
        return None
    return profile if profile[16:20] == (b"GRAY" if grayscale else b"RGB ") else None


# --- formats -----------------------------------------------------------------------------------------

def output_format(requested: str, source_format: str, has_alpha: bool) -> str:
    """The format to write: the requested one, or the source's for "same"; png when jpg would lose alpha."""
    if requested == "same":
        fmt = _SAME_FORMAT.get(source_format.lower(), "png")
    elif requested in _EXTENSIONS:
        fmt = requested
    else:
        raise ValueError(f"unknown output format {requested!r}; expected one of png, jpg, webp, tiff, same")
    return "png" if has_alpha and fmt == "jpg" else fmt


def extension(fmt: str) -> str:
    """The file-name extension (with the dot) for an output format."""
    try:
        return _EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}") from None


# --- encoding ----------------------------------------------------------------------------------------

def encode_image(rgb: np.ndarray, alpha: np.ndarray | None, fmt: str, *, grayscale: bool = False,
                 bit_depth: int = 8, quality: int | None = None, icc_profile: bytes | None = None,
                 exif: bytes | None = None, software: str | None = None) -> bytes:
    """Encode float planes (clamped to [0, 1], rounded) as the bytes of a `fmt` file; `rgb` may also be
    the colour planes `colour_planes` made already (how a streamed output arrives).

    - grayscale=True writes one channel: the ITU-R BT.601 luma of `rgb` (equal channels give that value).
      WebP has no grey mode, so Pillow stores it as RGB.
    - bit_depth=16 is kept for png and tiff; jpg and webp are 8-bit formats and get 8 bits.
    - quality applies to jpg (default 95) and webp (default 90); png (zlib level `PNG_COMPRESSION`) and
      tiff are lossless.
    - icc_profile and exif are embedded in every format. 16-bit colour (and 16-bit grey+alpha, written
      as RGBA) is encoded by OpenCV: the profile and EXIF are added as PNG chunks; in TIFF the profile
      is added as a tag, but EXIF is not carried (OpenCV cannot write it, and merging EXIF sub-IFDs
      into a finished TIFF is not worth its risk).
    - 8-bit and 16-bit grey TIFF are written uncompressed: Pillow's compressed TIFF writer (libtiff)
      rejects EXIF sub-IFDs.
    - software (which program and settings made the pixels) becomes the Software tag of the first IFD,
      replacing the source's: in the EXIF block of png, jpg and webp, and in the TIFF's own tags (also
      for 16-bit colour). Non-ASCII characters become "?". A JPEG whose EXIF would outgrow its 64 KiB
      segment keeps the source's EXIF without it.
    """
    depth = output_depth(fmt, bit_depth)
    _check_planes(rgb, alpha, fmt, grayscale, depth)
    if software:
        exif = _with_software(exif, software, fmt)
    colour = rgb if rgb.dtype.kind == "u" else colour_planes(rgb, grayscale, depth)
    pixels = colour if alpha is None else np.concatenate([colour, quantise(alpha[:, :, None], depth)], axis=2)
    if depth == 16 and pixels.shape[2] > 1:
        return _encode_16bit_colour(pixels, fmt, icc_profile, exif, software)
    return _encode_pillow(pixels, fmt, quality, icc_profile, exif)


def luma(rgb: np.ndarray) -> np.ndarray:
    """The ITU-R BT.601 luma (H, W) of float RGB planes (H, W, 3): what grey outputs hold."""
    return rgb @ _LUMA_BT601


def _check_planes(rgb: np.ndarray, alpha: np.ndarray | None, fmt: str, grayscale: bool, depth: int) -> None:
    """Reject arguments that are programming errors (the CLI picks formats with `output_format`)."""
    if fmt not in _PILLOW_FORMAT:
        raise ValueError(f"cannot encode format {fmt!r}")
    if rgb.dtype.kind == "u":
        expected = (1 if grayscale else 3, np.uint16 if depth == 16 else np.uint8)
        if rgb.ndim != 3 or (rgb.shape[2], rgb.dtype) != expected:
            raise ValueError(f"quantised planes must be (H, W, {expected[0]}) {np.dtype(expected[1])} here, "
                             f"got {rgb.shape} {rgb.dtype}")
    elif rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha must have shape {rgb.shape[:2]}, got {alpha.shape}")
    if alpha is not None and fmt == "jpg":
        raise ValueError("jpg cannot hold alpha (use output_format to pick png)")


def output_depth(fmt: str, bit_depth: int) -> int:
    """The bits per sample a `fmt` file gets for a source of `bit_depth`: 16 only where png and tiff can hold it."""
    return 16 if bit_depth == 16 and fmt in ("png", "tiff") else 8


def colour_planes(rgb: np.ndarray, grayscale: bool, depth: int) -> np.ndarray:
    """Float RGB (H, W, 3) as an output stores its colour: rounded to `depth` bits, luma alone (H, W, 1) for grey."""
    return quantise(luma(rgb)[:, :, None] if grayscale else rgb, depth)


def quantise(planes: np.ndarray, depth: int) -> np.ndarray:
    """Float planes to rounded unsigned integers of `depth` bits."""
    scaled = np.clip(planes, 0.0, 1.0)
    scaled *= 65535 if depth == 16 else 255
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint16 if depth == 16 else np.uint8)


def _encode_pillow(pixels: np.ndarray, fmt: str, quality: int | None, icc_profile: bytes | None,
                   exif: bytes | None) -> bytes:
    """Encode 8-bit L/LA/RGB/RGBA or 16-bit grey (I;16) pixels with Pillow."""
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    options: dict[str, Any] = {}
    if fmt in _DEFAULT_QUALITY:
        options["quality"] = _DEFAULT_QUALITY[fmt] if quality is None else quality
    if fmt == "png":
        options["compress_level"] = PNG_COMPRESSION
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = _exif_for_tiff(exif) if fmt == "tiff" else _EXIF_HEADER + exif.removeprefix(_EXIF_HEADER)
    buffer = io.BytesIO()
    image.save(buffer, _PILLOW_FORMAT[fmt], **options)
    return buffer.getvalue()


def _exif_for_tiff(exif: bytes) -> Image.Exif:
    """EXIF tags for a TIFF's own IFD, without the tags that describe the pixel layout of the file they came from."""
    tags = Image.Exif()
    tags.load(exif)
    for tag in _TIFF_LAYOUT_TAGS:
        tags.pop(tag, None)
    return tags


def _encode_16bit_colour(pixels: np.ndarray, fmt: str, icc_profile: bytes | None, exif: bytes | None,
                         software: str | None) -> bytes:
    """Encode 16-bit RGB/RGBA (or grey+alpha, as RGBA) with OpenCV, then add the profile (and EXIF for PNG,
    the Software tag for TIFF)."""
    import cv2  # only this path needs OpenCV

    if pixels.shape[2] == 2:
        pixels = pixels[:, :, [0, 0, 0, 1]]  # OpenCV writes no grey+alpha
    bgr = np.ascontiguousarray(pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]])
    if fmt == "png":
        ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    else:
        ok, encoded = cv2.imencode(".tif", bgr)
    if not ok:
        raise ValueError(f"OpenCV could not encode a 16-bit {fmt} image of shape {pixels.shape}")
    data = encoded.tobytes()
    if fmt == "png":
        return _png_with_metadata(data, icc_profile, exif)
    return _tiff_with_tags(data, icc_profile, has_alpha=bgr.shape[2] == 4, software=software)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC of type and payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_with_metadata(png: bytes, icc_profile: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP and eXIf chunks right after IHDR (before any image data, where readers expect them)."""
    chunks = []
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(_EXIF_HEADER)))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length and type, IHDR data, CRC
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def _tiff_with_tags(tiff: bytes, icc_profile: bytes | None, has_alpha: bool, software: str | None) -> bytes:
    """Add what OpenCV's TIFF writer leaves out to the first IFD: the ICC profile, the Software tag and, for
    RGBA, ExtraSamples (without ExtraSamples = 2, unassociated alpha, libtiff-based readers do not know the
    fourth channel is alpha)."""
    entries = []  # (tag, TIFF type, count, value in file byte order)
    order = _byte_order(tiff)
    if has_alpha:
        entries.append((_EXTRA_SAMPLES_TAG, 3, 1, struct.pack(order + "H", 2)))  # SHORT 2: unassociated alpha
    if icc_profile:
        entries.append((_ICC_TAG, 7, len(icc_profile), icc_profile))  # type 7: UNDEFINED bytes
    if software:
        entries.append(_ascii_entry(_SOFTWARE_TAG, software))
    return _set_first_ifd_entries(tiff, entries)


def _with_software(exif: bytes | None, software: str, fmt: str) -> bytes | None:
    """The EXIF block (made if there is none) with `software` as its Software tag; see `encode_image`."""
    block = _EMPTY_TIFF if exif is None else exif.removeprefix(_EXIF_HEADER)
    try:
        marked = _EXIF_HEADER + _set_first_ifd_entries(block, [_ascii_entry(_SOFTWARE_TAG, software)])
    except (ValueError, struct.error):  # a source block we cannot parse is carried as it came
        return exif
    return exif if fmt == "jpg" and len(marked) > _JPEG_EXIF_LIMIT else marked


def _ascii_entry(tag: int, text: str) -> tuple[int, int, int, bytes]:
    """A TIFF ASCII entry (type 2): the text, NUL-terminated."""
    value = text.encode("ascii", "replace") + b"\x00"
    return tag, 2, len(value), value


def _byte_order(tiff: bytes) -> str:
    try:
        return {b"II": "<", b"MM": ">"}[tiff[:2]]
    except KeyError:
        raise ValueError("not a TIFF-structured block") from None


def _set_first_ifd_entries(tiff: bytes, new: list[tuple[int, int, int, bytes]]) -> bytes:
    """`tiff` (a TIFF file or EXIF block) with `new` entries in its first IFD, replacing those of the same tags.

    The values and a copy of the IFD are appended and the header is pointed at the copy; nothing else
    moves, so every offset in the file (sub-IFDs, maker notes, strips) stays valid.
    """
    order = _byte_order(tiff)
    magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42:
        raise ValueError("cannot add tags to a BigTIFF file")
    if not new:
        return tiff
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    replaced = {tag for tag, *_ in new}
    entries = [entry for entry in (tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i] for i in range(count))
               if struct.unpack_from(order + "H", entry)[0] not in replaced]
    next_ifd = tiff[ifd + 2 + 12 * count: ifd + 6 + 12 * count]
    body = _word_aligned(tiff)
    for tag, kind, number, value in new:
        if len(value) <= 4:  # small values live in the entry itself
            field = value.ljust(4, b"\x00")
        else:
            field = struct.pack(order + "I", len(body))
            body = _word_aligned(body + value)
        entries.append(struct.pack(order + "HHI", tag, kind, number) + field)
    entries.sort(key=lambda entry: struct.unpack_from(order + "H", entry)[0])
    new_ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + next_ifd
    return body[:4] + struct.pack(order + "I", len(body)) + body[8:] + new_ifd


def _word_aligned(data: bytes) -> bytes:
    """`data` padded to an even length (TIFF offsets must be even)."""
    return data + b"\x00" * (len(data) % 2)


# --- writing -----------------------------------------------------------------------------------------

def write_image(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> None:
    """Write `data` atomically (`atomic.write_atomically`): readers see the old file or the whole new one,
    never a partial one; without `overwrite` an existing file is an error, checked race-free."""
    if not overwrite and os.path.lexists(path):
        raise ImageWriteError(path, _EXISTS)
    try:
        write_atomically(path, lambda handle: handle.write(data), overwrite=overwrite)
    except FileExistsError:
        raise ImageWriteError(path, _EXISTS) from None
    except OSError as error:
        kind = StopBatch if error.errno in (errno.ENOSPC, errno.EDQUOT) else ImageWriteError
        raise kind(path, f"cannot write: {error.strerror or error}") from error


# --- resampling --------------------------------------------------------------------------------------

def lanczos_resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (H, W) or (H, W, C) float planes with Pillow's antialiased Lanczos in float mode (no 8-bit rounding).

    Values are not clamped: Lanczos overshoots slightly at edges, and encoding clamps.
    """
    planes = array[:, :, None] if array.ndim == 2 else array
    resized = np.empty((height, width, planes.shape[2]), np.float32)
    for channel in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[:, :, channel], dtype=np.float32))
        resized[:, :, channel] = np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS))
    return resized[:, :, 0] if array.ndim == 2 else resized
