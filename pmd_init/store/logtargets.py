"""log_targets.json in the config dir: where programs' lines are shipped
(model/logtargets.py has what a target is; docs/log-targets.md the file).

Read once at start. A file that is not there means no targets; one that cannot be read or
parsed, or a target in it that is invalid, is a problem that names it, and every valid
target still loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .files import read_json

if TYPE_CHECKING:
    from ..model.logtargets import LogTargetSpec

LOG_TARGETS_FILE = "log_targets.json"


def load_log_targets(config_dir: Path, env: Mapping[str, str]
                     ) -> tuple[dict[str, LogTargetSpec], list[str]]:
    from ..model.logtargets import parse_log_targets  # a pydantic model: built when needed

    path = config_dir / LOG_TARGETS_FILE
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return {}, []
    except (OSError, ValueError) as exc:
        return {}, [f"{LOG_TARGETS_FILE}: {exc}"]
    return parse_log_targets(raw, env)
