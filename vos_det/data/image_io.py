"""Reading user images of any common kind into the array layout detectron2 models expect."""
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["read_image_file", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# PIL modes of integer images with more than 8 bits per pixel.
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_8bit(image):
    """Linearly rescale a 16/32-bit or float single-channel image to 0..255 (mode "L")."""
    values = np.asarray(image, dtype=np.float64)
    low, high = np.nanmin(values), np.nanmax(values)
    scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
    return Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8), mode="L")


def _open_image(path: str):
    """``Image.open``, with PIL's decompression-bomb warning re-issued naming the file.

    PIL warns (DecompressionBombWarning) above ``Image.MAX_IMAGE_PIXELS`` pixels and refuses
    (DecompressionBombError) above twice that; its messages do not say which file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        warnings.warn(
            f"{path}: {width}x{height} image ({width * height} pixels) exceeds "
            f"PIL.Image.MAX_IMAGE_PIXELS ({limit}), could be a decompression bomb; reading it "
            "anyway (PIL refuses more than twice that)",
            Image.DecompressionBombWarning,
            stacklevel=3,
        )
    return image


def read_image_file(path: str, format: str = "BGR") -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 array in ``format`` channel order.

    Grayscale, palette, RGBA / LA (alpha dropped), CMYK, 16-bit and float images are
    converted; EXIF orientation is applied. An image of more than PIL's
    ``Image.MAX_IMAGE_PIXELS`` pixels is read with a DecompressionBombWarning naming the file;
    one of more than twice that is refused (raise or unset the limit to read it).

    Args:
        path: the image file.
        format: "BGR" (detectron2's default input format) or "RGB".

    Returns:
        np.ndarray: (H, W, 3) uint8 image.

    Raises:
        ValueError: the file is missing, not an image, truncated or too large to decode
            (more than twice ``PIL.Image.MAX_IMAGE_PIXELS``), with the path and the reason
            in the message.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"format must be 'BGR' or 'RGB', got {format!r}")
    try:
        with _open_image(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
                image = _to_8bit(image)
            rgb = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"{path}: image too large to decode safely ({e}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "(None: no limit) to read it"
        ) from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from None
    return rgb[:, :, ::-1].copy() if format == "BGR" else rgb.copy()
