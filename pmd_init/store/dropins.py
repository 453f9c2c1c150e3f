"""programs.d: drop-in files of programs beside programs.json.

`<config-dir>/programs.d/*.json`, each `{"programs": [...]}` (as programs.json, `version`
optional), read in name order after programs.json, at boot and on each HUP, and merged
with it, as systemd's `.d` folders and supervisord's `[include] files = conf.d/*.conf`.
One image can carry programs.json and each deployment add its own file (a ConfigMap, a
volume) without editing it.

A drop-in never takes the container down: a file that is not valid JSON or holds an
invalid program is left out whole, and a program whose name is already defined (in
programs.json or an earlier file) is left out; each such problem is reported (health's
`config_problem`) and everything else boots. A drop-in program's id, when it has none or
one already taken, is the next free one: ids are only stable in the files once an API
edit has written them there.

Which file each program came from is kept by name, so that an API edit, enable or
disable, or removal writes the file the program lives in, and an add writes
programs.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..model.graph import GraphError, check_graph
from ..model.spec import ProgramSpec

FOLDER = "programs.d"


@dataclass
class DropIns:
    """What the drop-ins added to a programs list, and what was left out and why."""

    specs: list[ProgramSpec] = field(default_factory=list)
    #: program name -> the drop-in file it came from
    sources: dict[str, Path] = field(default_factory=dict)
    #: every file read (also those now empty), so a removal can empty its file
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def drop_in_files(config_dir: Path) -> list[Path]:
    folder = config_dir / FOLDER
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.is_file()
                      and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:  # unreadable: reported, the rest boots
        raise DropInError(f"{FOLDER}: {exc.strerror or exc}") from None


class DropInError(ValueError):
    pass


def merge(config_dir: Path, base: list[ProgramSpec],
          parse: Callable[[Path], list[ProgramSpec]]) -> tuple[list[ProgramSpec], DropIns]:
    """`base` (programs.json's programs) with every usable drop-in program after it."""
    found = DropIns()
    try:
        paths = drop_in_files(config_dir)
    except DropInError as exc:
        found.problems.append(str(exc))
        return base, found
    names = {s.name for s in base}
    ids = {s.id for s in base if s.id is not None}
    merged = list(base)
    for path in paths:
        found.files.append(path)
        try:
            specs = parse(path)
        except (ValueError, OSError) as exc:
            found.problems.append(f"{FOLDER}/{path.name} left out: {exc}")
            continue
        for spec in specs:
            if spec.name in names:
                found.problems.append(f"{FOLDER}/{path.name}: program {spec.name!r} is "
                                      "already defined; this definition is left out")
                continue
            if spec.port_range and any(
                    other.port_range and other.port_range.overlaps(spec.port_range)
                    for other in merged):
                found.problems.append(f"{FOLDER}/{path.name}: the port range of "
                                      f"{spec.name!r} overlaps another program's; left out")
                continue
            if spec.id is None or spec.id in ids:
                spec = spec.model_copy(update={"id": max(ids, default=0) + 1})
            assert spec.id is not None
            ids.add(spec.id)
            names.add(spec.name)
            merged.append(spec)
            found.specs.append(spec)
            found.sources[spec.name] = path
    return merge_checked(merged, found)


def merge_checked(merged: list[ProgramSpec],
                  found: DropIns) -> tuple[list[ProgramSpec], DropIns]:
    """Leave out drop-in programs until depends_on's graph holds (a drop-in may name a
    program that is not there; each removal may break another that depended on it).
    programs.json's own graph was checked when it was read."""
    while True:
        try:
            check_graph(merged)
            return merged, found
        except GraphError as exc:
            culprit = found.sources.pop(exc.program, None)
            if culprit is None:
                raise
            found.problems.append(f"{FOLDER}/{culprit.name}: {exc}; {exc.program!r} "
                                  "left out")
            merged = [s for s in merged if s.name != exc.program]
            found.specs = [s for s in found.specs if s.name != exc.program]
