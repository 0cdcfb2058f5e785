"""Real photos for verification, warmup and benchmarks, and their JPEG/PNG encodings.

The bundled corpus is the colour photos that ship inside scikit-image and scikit-learn, so nothing
is downloaded. A directory of JPEG/PNG files can be used instead.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from spec.errors import HarnessError

BUNDLED_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "colorwheel", "retina")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageCorpusError(HarnessError):
    """The image directory is unusable; the message says which file and why."""


def bundled_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 HxWx3) for every bundled photo, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [(name, np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])) for name in BUNDLED_SKIMAGE]
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        photos.append((Path(path).stem, np.ascontiguousarray(image)))
    return photos


def directory_photos(directory: Path) -> list[tuple[str, np.ndarray]]:
    """(file name, RGB uint8) for every JPEG/PNG in `directory`, sorted by name."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageCorpusError(f"{directory}: no .jpg/.jpeg/.png files; add images or use the bundled photos")
    photos = []
    for path in files:
        try:
            with Image.open(path) as image:
                photos.append((path.name, np.asarray(image.convert("RGB"))))
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageCorpusError(f"{path}: not a readable image ({exc}); remove it or fix it") from None
    return photos


def load_photos(directory: Optional[Path] = None) -> list[tuple[str, np.ndarray]]:
    """The corpus: `directory` when given, else the bundled photos."""
    return directory_photos(directory) if directory is not None else bundled_photos()


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an RGB/grey uint8 image with a high-quality filter (PIL Lanczos)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS))


def encode(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Encode a uint8 image (HxW or HxWxC) as JPEG or PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    pil = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    if fmt == "jpeg":
        pil.save(buffer, format="JPEG", quality=quality)
    elif fmt == "png":
        pil.save(buffer, format="PNG")
    else:
        raise ValueError(f"unknown image format {fmt!r}; use 'jpeg' or 'png'")
    return buffer.getvalue()
