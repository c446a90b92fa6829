"""Opening user images robustly: one clear error per bad file, never a crash of the batch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError


class ImageLoadError(ValueError):
    """An input that is not a readable image; the message names the file and the fix."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully into RGB, applying its EXIF orientation.

    Raises :class:`ImageLoadError` for a missing file, a file that is not an image, a
    truncated or corrupt image, or a decompression bomb.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(path, "no such file")
    if p.is_dir():
        raise ImageLoadError(path, "is a folder, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()
                image = ImageOps.exif_transpose(im)
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(path, f"refused as a possible decompression bomb ({err}); downscale it first") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(path, "not an image PIL can read (wrong extension or not an image file)") from err
    except OSError as err:
        raise ImageLoadError(path, f"corrupt or truncated image ({err}); re-download or re-export it") from err
