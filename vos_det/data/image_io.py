"""Reading user images of any common kind into the array layout detectron2 models expect."""
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


def read_image_file(path: str, format: str = "BGR") -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 array in ``format`` channel order.

    Grayscale, palette, RGBA / LA (alpha dropped), CMYK, 16-bit and float images are
    converted; EXIF orientation is applied.

    Args:
        path: the image file.
        format: "BGR" (detectron2's default input format) or "RGB".

    Returns:
        np.ndarray: (H, W, 3) uint8 image.

    Raises:
        ValueError: the file is missing, not an image, truncated or too large to decode,
            with the path and the reason in the message.
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"format must be 'BGR' or 'RGB', got {format!r}")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
                image = _to_8bit(image)
            rgb = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from None
    return rgb[:, :, ::-1].copy() if format == "BGR" else rgb.copy()
