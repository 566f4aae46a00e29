"""Errors a user can fix, shared by the data loaders and the bank (no other imports)."""

from __future__ import annotations


class DataError(Exception):
    """Base class of every data problem that the user can fix."""


class DataNotFoundError(DataError, FileNotFoundError):
    """No candidate data folder holds the files."""


class ChecksumError(DataError):
    """A file's sha256 is not the registry's."""


class MalformedFileError(DataError, ValueError):
    """A source file cannot be parsed (names the file and the line)."""


class UnknownModelError(DataError, KeyError):
    """A model name that no alias table entry knows (lists the closest known names)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])
