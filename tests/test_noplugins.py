"""pid1/noplugins.py: pydantic's plugin lookup without its imports, and the pydantic
behaviour that it relies on. Each case runs in a fresh interpreter (the loader is put in
place before pydantic's first import), with a distribution that declares a pydantic
plugin on its path, so that a lookup which does read the metadata finds one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pmd_init.pid1.noplugins import ALL_OFF

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A folder holding an installed distribution with a `pydantic` entry point."""
    (tmp_path / "fakeplugin.py").write_text(
        "class Plugin:\n"
        "    def new_schema_validator(self, *args, **kwargs):\n"
        "        return None, None, None\n"
        "plugin = Plugin()\n")
    info = tmp_path / "fakeplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nfake = fakeplugin:plugin\n")
    return tmp_path


def run(code: str, path: Path, switch: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(path)])
    if switch is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = switch
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


BUILD = """
import json, os, sys
from pmd_init.pid1 import noplugins
installed = noplugins.install(os.environ.get("PYDANTIC_DISABLE_PLUGINS"))
asked = []
if installed:
    stand_in = sys.modules[noplugins.LOADER]
    stand_in.get_plugins = lambda: asked.append(1) or ()
from pmd_init.model.spec import ProgramSpec
spec = ProgramSpec.model_validate({"name": "web", "command": "sleep 1"})
print(json.dumps({"installed": installed, "asked": len(asked), "name": spec.name,
                  "metadata": "importlib.metadata" in sys.modules}))
"""


def test_pydantic_finds_the_plugin_without_the_switch(plugin_path: Path) -> None:
    """The fixture's plugin is one pydantic's own loader finds: the cases below that
    find none find none because of the switch."""
    found = run("import json\nfrom pydantic.plugin._loader import get_plugins\n"
                "print(json.dumps({'plugins': [type(p).__name__ for p in get_plugins()]}))",
                plugin_path, None)
    assert found == {"plugins": ["Plugin"]}


@pytest.mark.parametrize("switch", ALL_OFF)
def test_pydantic_loads_no_plugin_when_the_switch_turns_all_off(plugin_path: Path,
                                                                switch: str) -> None:
    """What the stand-in answers is what pydantic's own loader answers then."""
    found = run("import json\nfrom pydantic.plugin._loader import get_plugins\n"
                "print(json.dumps({'plugins': list(get_plugins())}))", plugin_path, switch)
    assert found == {"plugins": []}


@pytest.mark.parametrize("switch", ALL_OFF)
def test_models_build_without_importlib_metadata(plugin_path: Path, switch: str) -> None:
    """pydantic asks the stand-in at each model it builds, and nothing imports
    importlib.metadata on the way: when either changes, the saving is gone."""
    found = run(BUILD, plugin_path, switch)
    assert found["installed"] is True
    assert isinstance(found["asked"], int) and found["asked"] >= 1
    assert found == {**found, "name": "web", "metadata": False}


@pytest.mark.parametrize("switch", [None, "", "fake", "logfire,fake"])
def test_not_installed_unless_every_plugin_is_off(plugin_path: Path,
                                                  switch: str | None) -> None:
    """A switch that leaves some plugins on: pydantic's own loader does the lookup."""
    found = run(BUILD, plugin_path, switch)
    assert found["installed"] is False
    assert found["metadata"] is True  # pydantic's loader read the distributions


def test_not_installed_over_pydantics_own_loader(plugin_path: Path) -> None:
    found = run("import json\nimport pydantic.plugin._loader\n"
                "from pmd_init.pid1 import noplugins\n"
                "print(json.dumps({'installed': noplugins.install('__all__')}))",
                plugin_path, "__all__")
    assert found == {"installed": False}


def test_any_other_name_is_pydantics_own(plugin_path: Path) -> None:
    """A name other than get_plugins (a pydantic that uses more of the module) loads
    pydantic's loader, which stays in place from then on."""
    found = run("import json, sys\nfrom pmd_init.pid1 import noplugins\n"
                "noplugins.install('__all__')\n"
                "from pydantic.plugin._loader import PYDANTIC_ENTRY_POINT_GROUP as group\n"
                "real = sys.modules[noplugins.LOADER]\n"
                "print(json.dumps({'group': group, 'real': not isinstance(real, "
                "noplugins._Loader), 'plugins': list(real.get_plugins())}))",
                plugin_path, "__all__")
    assert found == {"group": "pydantic", "real": True, "plugins": []}
