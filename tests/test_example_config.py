"""The example configuration users copy (config/, which the image installs as /etc/pmd, and
the Kubernetes ConfigMap) is input the add endpoint accepts, program by program, so that
it cannot drift from the API that serves it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pmd_init.api.models import AddProgramRequest
from tests.harness import ROOT


def configmap_programs_json() -> str:
    """The `programs.json: |` block of examples/kubernetes.yaml (no YAML parser needed)."""
    lines = (ROOT / "examples" / "kubernetes.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "programs.json: |") + 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = []
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        block.append(line)
    return "\n".join(block)


SOURCES = {
    "config/programs.json": lambda: (ROOT / "config" / "programs.json").read_text(),
    "config/programs.default.json":
        lambda: (ROOT / "config" / "programs.default.json").read_text(),
    "examples/kubernetes.yaml": configmap_programs_json,
}


def image_accounts() -> set[str]:
    """root, and the accounts the Dockerfile creates: the users the example may name."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    return {"root", *re.findall(r"useradd\b[^;]*?(\S+);", dockerfile)}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_example_program_is_a_valid_add_request(source: str) -> None:
    programs: list[dict[str, Any]] = json.loads(SOURCES[source]())["programs"]
    assert programs
    accounts = image_accounts()
    for entry in programs:
        # the accounts are the image's, not this machine's: the model, not the system
        AddProgramRequest.model_validate(entry)
        assert entry["user"] in accounts, (source, entry["name"], accounts)


def test_the_example_config_shows_the_readiness_and_dependency_fields() -> None:
    """config/programs.json has an example of each: depends_on with conditions, a
    readiness source, a oneshot its dependent waits for, a backoff retried forever."""
    programs = {p["name"]: p for p in json.loads(SOURCES["config/programs.json"]())["programs"]}
    once = [p for p in programs.values() if p.get("oneshot")]
    assert once, "no oneshot"
    waits = {name: condition for p in programs.values()
             for name, condition in (p.get("depends_on") or {}).items()}
    assert waits.get(once[0]["name"]) == "completed_successfully", waits
    assert any(p.get("readiness") for p in programs.values())
    assert any(p.get("startretries") == -1 and p.get("backoff") == "exponential"
               and p.get("backoff_max_seconds") for p in programs.values())
