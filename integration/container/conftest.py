"""Fixtures of the container suite (see container_kit for what runs where)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from container_kit import IMAGE, LABEL, Container, docker

# CI sets this where these tests are meant to run: there a skip would hide a missing
# image or service, so it counts as a failure.
STRICT = os.environ.get("PMD_CONTAINER_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, but PMD_CONTAINER_STRICT=1: {report.longrepr}"


@pytest.fixture
def container_factory(tmp_path: Path) -> Iterator[Callable[..., Container]]:
    """Starts containers of PMD_IMAGE (detached, no network) and removes them afterwards."""
    started: list[str] = []

    def start(*args: str, programs: list[dict[str, Any]] | None = None,
              command: tuple[str, ...] = ()) -> Container:
        name = f"pmd-test-{uuid.uuid4().hex[:10]}"
        extra: list[str] = []
        if programs is not None:
            config = tmp_path / f"config-{name}"
            config.mkdir()
            (config / "programs.json").write_text(
                json.dumps({"version": 1, "programs": programs}, indent=2))
            extra += ["-v", f"{config}:/etc/pmd"]
        docker("run", "-d", "--pull", "never", "--name", name, "--label", LABEL,
               "--network", "none",
               *extra, *args, IMAGE, *command)
        started.append(name)
        return Container(name)

    yield start
    for name in started:
        docker("rm", "-f", "-v", name, check=False)
