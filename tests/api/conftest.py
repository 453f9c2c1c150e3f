"""One pmd per test module (started as a subreaper, real programs behind it); tests that
need a pmd of their own (API key, re-exec, reboot, reset) start it themselves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Pmd

#: Short grace so that "finished quick-start programs answer 404 afterwards" is quick.
ENV = {"PMD_EPHEMERAL_GRACE": "1.5"}


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pmd")
    with Pmd(base, [], env=ENV) as running:
        yield running


@pytest.fixture(scope="module")
def http(pmd: Pmd):  # noqa: ANN201
    return pmd.http


@pytest.fixture(scope="module")
def uds(pmd: Pmd):  # noqa: ANN201
    return pmd.uds
