"""Inference inputs: list a folder of images and keep going past files that cannot be read."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai.data import Dataset, list_data_collate

__all__ = ["IMAGE_EXTENSIONS", "folder_items", "SafeDataset", "collate_skip_none"]

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".mha", ".mhd", ".nrrd", ".nii", ".nii.gz", ".dcm")

logger = logging.getLogger(__name__)


def folder_items(input_dir: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[dict]:
    """``[{"image": path}, ...]`` for the image files in ``input_dir`` (sorted; sub-folders ignored).

    Raises a clear error when the folder does not exist or holds no image with one of ``extensions``.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"input_dir {folder} is not a folder")
    exts = tuple(e.lower() for e in extensions)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(exts))
    if not files:
        raise FileNotFoundError(f"input_dir {folder} has no image files (looked for {', '.join(exts)})")
    return [{"image": str(p)} for p in files]


class SafeDataset(Dataset):
    """A MONAI ``Dataset`` whose items that fail to load or transform become ``None`` (and are recorded).

    For inference on a folder: one corrupt file must not stop the others. Each failure is logged with
    the file name and the error and kept in ``errors`` (``[{"image", "error"}]``; with worker processes
    only the log has them). Use :func:`collate_skip_none` as the loader's ``collate_fn``.
    """

    def __init__(self, data: Sequence, transform: Callable | None = None) -> None:
        super().__init__(data, transform)
        self.errors: list[dict[str, str]] = []

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:  # noqa: BLE001 - reported, then skipped
            item = self.data[index]
            image = str(item.get("image")) if isinstance(item, dict) else str(item)
            cause = e.__cause__ or e
            message = f"{type(cause).__name__}: {cause}".strip()
            logger.error(f"skipping {image}: {message}")
            self.errors.append({"image": image, "error": message})
            return None


def collate_skip_none(batch: Sequence[Any]) -> Any:
    """``list_data_collate`` of the items that are not ``None``; ``None`` if none is left."""
    items = [b for b in batch if b is not None]
    return list_data_collate(items) if items else None
