"""Errors raised by the dataset readers and the datalist code.

Both are ``ValueError`` subclasses whose message always starts with the offending file, then the place in it
(line, section/item, landmark) and what was expected, so that a user with 400 annotation files can go straight
to the broken one.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DatalistError", "LandmarkFileError"]


def _join(parts: list[str]) -> str:
    return ": ".join(p for p in parts if p)


class LandmarkFileError(ValueError):
    """An annotation, landmark or image file cannot be used as it is.

    Args:
        path: the file (or folder) at fault.
        message: what is wrong and what was expected.
        line: 1-based line number in a text file, if known.
        landmark: the landmark (name or label) concerned, if any.
    """

    def __init__(self, path: Any, message: str, line: int | None = None, landmark: str | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.message = message
        self.line = line
        self.landmark = landmark
        where = self.path or ""
        if line is not None:
            where = f"{where}, line {line}"
        super().__init__(_join([where, f"landmark {landmark!r}" if landmark is not None else "", message]))

    def __reduce__(self):  # keep the structured fields through pickling (DataLoader workers)
        return (type(self), (self.path, self.message, self.line, self.landmark))


class DatalistError(ValueError):
    """A datalist JSON file (or dictionary) is malformed.

    Args:
        path: the datalist file (``None`` for an in-memory dictionary).
        message: what is wrong and what was expected.
        section: ``training`` / ``validation`` / ``test``, if the problem is in an item.
        index: 0-based item index within the section.
        image: the item's ``image`` entry, when known.
        landmark: the landmark name concerned, if any.
    """

    def __init__(
        self,
        path: Any,
        message: str,
        section: str | None = None,
        index: int | None = None,
        image: str | None = None,
        landmark: str | None = None,
    ) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.message = message
        self.section = section
        self.index = index
        self.image = image
        self.landmark = landmark
        item = ""
        if section is not None:
            item = f"{section}[{index}]" if index is not None else section
            if image is not None:
                item = f"{item} (image {image!r})"
        super().__init__(
            _join(
                [
                    self.path or "<datalist>",
                    item,
                    f"landmark {landmark!r}" if landmark is not None else "",
                    message,
                ]
            )
        )

    def __reduce__(self):
        return (type(self), (self.path, self.message, self.section, self.index, self.image, self.landmark))
