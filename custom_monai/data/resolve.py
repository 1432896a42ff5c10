"""Which datalist a bundle uses: the user's, or the generated demo data."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_datalist"]


def resolve_datalist(dataset_dir: str | os.PathLike | None = None, kind: str = "2d", filename: str = "datalist.json") -> str:
    """``dataset_dir/datalist.json`` when ``dataset_dir`` is given, else the demo datalist (generated on first use).

    Args:
        dataset_dir: folder holding ``filename`` (written by ``scripts/prepare_data.py``), or empty/None.
        kind: demo data kind, ``"2d"`` or ``"3d"``.
        filename: datalist file name inside ``dataset_dir``.
    """
    if dataset_dir:
        path = Path(dataset_dir) / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"no {filename} in dataset_dir {dataset_dir}: write one with scripts/prepare_data.py, or pass --datalist"
            )
        return str(path)
    from .demo import demo_datalist

    return str(demo_datalist(kind))

