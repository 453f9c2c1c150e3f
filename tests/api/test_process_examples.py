"""The document's curl, JavaScript (fetch) and Python (requests) examples, taken verbatim
from docs/process-api.md, run against a real pmd (only the port differs from `make run`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import wait_until
from tests.api.process_helpers import ENV, create, process
from tests.harness import ROOT, Pmd

DOC = ROOT / "docs" / "process-api.md"


def blocks(language: str) -> list[str]:
    text = DOC.read_text()
    examples = text[text.index("## Examples"):]
    return re.findall(rf"```{language}\n(.*?)```", examples, re.S)


@pytest.fixture(scope="module")
def pmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pmd]:
    base: Path = tmp_path_factory.mktemp("pm2-examples")
    with Pmd(base, [], env=ENV) as running:
        create(running.http, name="my-app", script="sleep 60")
        create(running.http, name="python-app", script="sleep 60")
        yield running


def here(code: str, pmd: Pmd) -> str:
    return code.replace("127.0.0.1:9615", f"127.0.0.1:{pmd.port}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_curl_examples(pmd, tmp_path):
    (script,) = blocks("bash")
    # only added: fail on an HTTP error, and a newline after each answer
    result = subprocess.run(["bash", "-c", "set -e\n" + here(script, pmd).replace(
        "curl ", "curl -sS --fail-with-body -w '\\n' ") + "\n"], capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    listed, created, detail, stopped, system = map(json.loads, result.stdout.splitlines())
    assert {"my-app", "python-app"} <= {p["name"] for p in listed}
    assert created["message"] == "Process started successfully"
    assert detail["name"] == "test-app" and detail["config"]["script"] == "node"
    assert detail["config"]["args"] == ["server.js"] and detail["port"] == "3000"
    assert stopped == {"success": True, "message": "Process stopped successfully"}
    assert system["platform"] == "linux"
    assert process(pmd.http, "test-app")["status"] == "stopped"


@pytest.mark.skipif(shutil.which("node") is None, reason="no node")
def test_javascript_example(pmd, tmp_path):
    (script,) = blocks("javascript")
    module = tmp_path / "example.mjs"
    module.write_text(here(script, pmd) + "\nconsole.log(JSON.stringify("
                      "{processes, result, system}));\n")
    result = subprocess.run(["node", str(module)], capture_output=True, text=True, timeout=60)
    if "fetch is not defined" in result.stderr:
        pytest.skip("node without fetch")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "my-app" in [p["name"] for p in out["processes"]]
    assert out["result"] == {"success": True, "message": "Process stopped successfully"}
    assert out["system"]["processes"]["total"] >= 2
    assert process(pmd.http, "my-app")["status"] == "stopped"


def python_with_requests() -> str | None:
    for candidate in ("python3", "python"):
        path = shutil.which(candidate)
        if path and subprocess.run([path, "-c", "import requests"],
                                   capture_output=True).returncode == 0:
            return path
    return None


@pytest.mark.skipif(python_with_requests() is None, reason="no python with requests")
def test_python_requests_example(pmd, tmp_path):
    script = next(b for b in blocks("python") if "import requests" in b)
    program = tmp_path / "example.py"
    program.write_text(here(script, pmd) + "\nimport json\n"
                       "print(json.dumps({'processes': processes, 'result': result}))\n")
    before = wait_until(lambda: (p := process(pmd.http, "python-app"))["pid"] and p)
    result = subprocess.run([python_with_requests(), str(program)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "python-app" in [p["name"] for p in out["processes"]]
    assert out["result"] == {"success": True, "message": "Process restarted successfully"}
    wait_until(lambda: process(pmd.http, "python-app")["pid"] not in (None, before["pid"]),
               10, "restarted")
