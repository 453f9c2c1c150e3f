"""programs.json, its first-boot snapshot programs.default.json, and the last good copy.

A corrupt or invalid programs.json must never crash-loop a container: the bad file is kept
aside under a timestamped name, pmd boots from the last good copy (state dir) or else the
default snapshot, and the problem is reported in status and logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..model.graph import GraphError, check_graph
from ..model.sockets import SocketError, socket_definitions
from ..model.spec import ProgramSpec, rule_field, share_alike
from .dropins import DropIns, merge
from .files import read_json, store_log
from .storage import Storage

FORMAT_VERSION = 1


class ConfigError(ValueError):
    """programs.json cannot be used; the message says why."""


@dataclass
class LoadReport:
    source: str  # "programs.json", "last-good", "default", "empty"
    problem: str | None = None
    quarantined: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "problem": self.problem,
            "quarantined": self.quarantined,
            "warnings": self.warnings,
        }


def parse_programs(raw: object, check_dependencies: bool = True) -> list[ProgramSpec]:
    """Validate a programs document; ids are assigned to programs that lack one.
    `check_dependencies=False` for a drop-in, whose depends_on may name programs of
    other files (dropins.merge checks the whole)."""
    if isinstance(raw, list):  # tolerate a bare list of programs
        raw = {"version": FORMAT_VERSION, "programs": raw}
    if not isinstance(raw, dict):
        raise ConfigError("the document must be an object with a 'programs' list")
    version = raw.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ConfigError(f"unsupported version {version!r} (this pmd reads {FORMAT_VERSION})")
    items = raw.get("programs")
    if not isinstance(items, list):
        raise ConfigError("'programs' must be a list")
    specs: list[ProgramSpec] = []
    for index, item in enumerate(items):
        try:
            specs.append(ProgramSpec.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or rule_field(first) or ""
            message = first["msg"].removeprefix("Value error, ")
            if not where:
                said = f": {message}"
            elif message.startswith(where):  # "readiness.fd 4 is taken by ..."
                said = f".{message}"
            else:
                said = f".{where}: {message}"
            raise ConfigError(f"programs[{index}]{said}") from None
    names: set[str] = set()
    ids: set[int] = set()
    for spec in specs:
        if spec.name in names:
            raise ConfigError(f"duplicate program name {spec.name!r}")
        names.add(spec.name)
        if spec.id is not None:
            if spec.id in ids:
                raise ConfigError(f"duplicate program id {spec.id}")
            ids.add(spec.id)
    next_id = max(ids, default=0) + 1
    result = []
    for spec in specs:
        if spec.id is None:
            spec = spec.model_copy(update={"id": next_id})
            next_id += 1
        result.append(spec)
    share_alike(result)
    ranged = [s for s in result if s.port_range]
    for i, a in enumerate(ranged):
        for b in ranged[i + 1 :]:
            assert a.port_range and b.port_range
            if a.port_range.overlaps(b.port_range):
                raise ConfigError(f"port ranges of {a.name!r} and {b.name!r} overlap")
    if not check_dependencies:
        return result
    try:
        check_graph(result)
    except GraphError as exc:
        index = next(i for i, s in enumerate(result) if s.name == exc.program)
        raise ConfigError(f"programs[{index}].depends_on: {exc}") from None
    try:
        socket_definitions((s.name, s.sockets) for s in result)
    except SocketError as exc:
        raise ConfigError(str(exc)) from None
    return result


def dump_programs(specs: list[ProgramSpec]) -> dict[str, object]:
    return {"version": FORMAT_VERSION, "programs": [s.to_json() for s in specs]}


class ProgramStore:
    def __init__(self, config_dir: Path, state_dir: Path,
                 storage: Storage | None = None) -> None:
        self.storage = storage or Storage(config_dir, state_dir)
        self.path = config_dir / "programs.json"
        self.default_path = config_dir / "programs.default.json"
        self.last_good_path = state_dir / "programs.last-good.json"
        self.report = LoadReport(source="empty")
        #: programs.d's programs as last read, and the problems found there.
        self.dropins = DropIns()
        #: Each drop-in file's programs as last read or written: a save rewrites only the
        #: files whose programs changed.
        self._dropin_saved: dict[Path, list[dict[str, object]]] = {}

    def _read(self, path: Path) -> list[ProgramSpec]:
        try:
            raw = read_json(path)
        except ValueError as exc:
            raise ConfigError(f"{path.name} is not valid JSON: {exc}") from None
        return parse_programs(raw)

    def _read_dropin(self, path: Path) -> list[ProgramSpec]:
        try:
            raw = read_json(path)
        except ValueError as exc:
            raise ConfigError(f"not valid JSON: {exc}") from None
        return parse_programs(raw, check_dependencies=False)

    def with_dropins(self, specs: list[ProgramSpec], report: bool = True) -> list[ProgramSpec]:
        """`specs` and programs.d's programs after them (store/dropins.py); `report`:
        the drop-ins' problems go to pmd's log too (they are in `dropins` either way)."""
        merged, self.dropins = merge(self.path.parent, specs, self._read_dropin)
        self._dropin_saved = {path: [] for path in self.dropins.files}
        for spec in self.dropins.specs:
            self._dropin_saved[self.dropins.sources[spec.name]].append(spec.to_json())
        for problem in self.dropins.problems if report else ():
            store_log().error("%s", problem)
        return merged

    def load(self) -> list[ProgramSpec]:
        """Read programs.json and programs.d (the latter whatever happened to the former)."""
        return self.with_dropins(self._load())

    def _load(self) -> list[ProgramSpec]:
        """Read programs.json, falling back as the module docstring says. Never raises for
        bad content; I/O errors other than a missing file are treated as bad content too."""
        if not self.path.exists():
            self.report = LoadReport(source="empty")
            if self.default_path.exists():
                try:
                    specs = self._read(self.default_path)
                    self.report = LoadReport(source="default")
                    return specs
                except (ConfigError, OSError) as exc:
                    self.report = LoadReport(source="empty", problem=str(exc))
            return []
        try:
            specs = self._read(self.path)
        except (ConfigError, OSError) as exc:
            return self._fall_back(str(exc))
        self.report = LoadReport(source="programs.json")
        self._snapshot_default()
        self._remember_good()
        return specs

    def reread(self) -> list[ProgramSpec]:
        """For a reload (SIGHUP): raises ConfigError and keeps the bad file where it is."""
        if not self.path.exists():
            return self.with_dropins([])
        specs = self._read(self.path)
        self._remember_good()
        return self.with_dropins(specs)

    def read_only(self, report: bool = True) -> list[ProgramSpec]:
        """What a start would load when nothing is wrong: programs.json (programs.default.json
        when it is absent) and programs.d, writing nothing; ConfigError or OSError when
        programs.json cannot be used (`pmd_init --write-boot-plan`, and a start's first
        look, which leaves the reports to the load that follows: `report=False`)."""
        if not self.path.exists():
            return self.read_default(report)
        return self.with_dropins(self._read(self.path), report)

    def read_default(self, report: bool = True) -> list[ProgramSpec]:
        if not self.default_path.exists():
            return self.with_dropins([], report)
        return self.with_dropins(self._read(self.default_path), report)

    def save(self, specs: list[ProgramSpec], renamed: dict[str, str] | None = None) -> None:
        """Each program into the file it came from: programs.d's into theirs (those whose
        programs changed; `renamed` maps an edited program's old name to its new one), the
        rest, and new ones, into programs.json. Raises StorageError when a file could not
        be written (it is unchanged); the last good copy in the state dir is a convenience
        and may fail on its own."""
        sources = dict(self.dropins.sources)
        for old, new in (renamed or {}).items():
            if old in sources:
                sources[new] = sources.pop(old)
        by_file: dict[Path, list[ProgramSpec]] = {path: [] for path in self._dropin_saved}
        main: list[ProgramSpec] = []
        for spec in specs:
            path = sources.get(spec.name)
            (by_file[path] if path is not None else main).append(spec)
        self.storage.write_json(self.path, dump_programs(main))
        self._remember_good()
        for path, items in by_file.items():
            content = [spec.to_json() for spec in items]
            if content != self._dropin_saved[path]:
                self.storage.write_json(path, dump_programs(items))
                self._dropin_saved[path] = content
        self.dropins.sources = {spec.name: path for path, items in by_file.items()
                                for spec in items}

    def _fall_back(self, problem: str) -> list[ProgramSpec]:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"programs.json.bad-{stamp}")
        try:
            import shutil  # only to keep an unusable file aside
            shutil.copy2(self.path, aside)
        except OSError:
            aside = None  # type: ignore[assignment]
        store_log().error("programs.json is unusable (%s); kept aside as %s", problem, aside)
        for source, path in (("last-good", self.last_good_path), ("default", self.default_path)):
            if path.exists():
                try:
                    specs = self._read(path)
                except (ConfigError, OSError):
                    continue
                self.report = LoadReport(source, problem, str(aside) if aside else None)
                return specs
        self.report = LoadReport("empty", problem, str(aside) if aside else None)
        return []

    def _snapshot_default(self) -> None:
        if not self.default_path.exists():
            try:
                self.storage.write_bytes(self.default_path, self.path.read_bytes())
            except OSError as exc:  # a read-only config dir is allowed
                store_log().warning("could not write %s: %s", self.default_path, exc)

    def _remember_good(self) -> None:
        try:
            self.storage.write_bytes(self.last_good_path, self.path.read_bytes())
        except OSError as exc:
            store_log().warning("could not write %s: %s", self.last_good_path, exc)
