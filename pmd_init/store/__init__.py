"""pmd's files on disk: programs.json, programs.default.json, ephemeral.json. Every write
is atomic (temp file, fsync, rename, fsync of the directory)."""

from .files import atomic_write_json, read_json
from .programs import LoadReport, ProgramStore

__all__ = ["LoadReport", "ProgramStore", "atomic_write_json", "read_json"]
