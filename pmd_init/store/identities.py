"""identities.json beside programs.json: read at start and on SIGHUP.

As with programs.json, a file that cannot be used as a whole (not JSON, not an object,
another version) changes nothing: the last good identities stay in force and the problem
is reported. A bad entry in a good file is left out and named (model/access.py). pmd only
reads this file; it never writes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from ..model.access import IDENTITIES_FILE, Identities, parse_identities

log = logging.getLogger("pmd.store")

#: Larger than any sane list of identities; a bigger file is refused unread.
SIZE_MAX = 1 << 20


class IdentityStore:
    def __init__(self, config_dir: Path) -> None:
        self.path = config_dir / IDENTITIES_FILE
        self.current = Identities()
        #: Why the file on disk is not what is in force (None: it is).
        self.refused: str | None = None

    @property
    def problem(self) -> str | None:
        """One line for health: the refused file, and the entries left out."""
        parts = []
        if self.refused is not None:
            parts.append(f"{IDENTITIES_FILE} not loaded ({self.refused}); the last good "
                         f"identities stay in force")
        if self.current.problems:
            parts.append(f"{IDENTITIES_FILE}: " + "; ".join(self.current.problems))
        return " / ".join(parts) or None

    def load(self) -> Identities:
        """Read the file; never raises. A missing file is no identities."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(SIZE_MAX + 1)
        except FileNotFoundError:
            self.current, self.refused = Identities(), None
            return self.current
        except OSError as exc:
            return self._refuse(f"cannot read it: {exc.strerror}")
        if len(raw) > SIZE_MAX:
            return self._refuse(f"larger than {SIZE_MAX} bytes")
        try:
            identities = parse_identities(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            return self._refuse(f"not JSON: {exc}")
        except ValueError as exc:
            return self._refuse(str(exc))
        self.current, self.refused = identities, None
        for problem in identities.problems:
            log.error("%s: %s", IDENTITIES_FILE, problem)
        return identities

    def _refuse(self, why: str) -> Identities:
        self.refused = why
        log.error("%s not loaded (%s): the last good identities stay in force",
                  IDENTITIES_FILE, why)
        return self.current
