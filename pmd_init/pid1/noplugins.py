"""pydantic's plugin lookup, without the imports it does not need when plugins are off.

pydantic asks `pydantic.plugin._loader.get_plugins()` for plugins at every model it
builds. That module imports importlib.metadata at its own import (and with it email,
zipfile, csv and importlib.resources: about 9 ms here), even when
PYDANTIC_DISABLE_PLUGINS, which pmd sets for itself and never changes, makes it return
no plugin without reading any metadata. A first start validates programs.json before it
spawns anything (pid1/firstboot.py), so those imports held back every program.

`install()` puts a loader in its place before pydantic is imported, when the switch turns
plugins off altogether: its `get_plugins()` returns no plugin, as pydantic's does then;
any other name asked of it is pydantic's own loader's (imported then, and in place from
then on). A pydantic that changes how it looks plugins up only loses the saving:
tests/test_noplugins.py fails when pydantic no longer asks this loader, or when its own
loader answers the switch otherwise.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

LOADER = "pydantic.plugin._loader"
#: The values of PYDANTIC_DISABLE_PLUGINS for which pydantic's loader returns no plugin.
ALL_OFF = ("__all__", "1", "true")


class _Loader(types.ModuleType):
    """Stands in for pydantic.plugin._loader (module doc)."""

    def get_plugins(self) -> tuple[()]:
        return ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # what the import system probes (`__path__` ...)
            raise AttributeError(name)
        if isinstance(sys.modules.get(LOADER), _Loader):
            del sys.modules[LOADER]
        return getattr(importlib.import_module(LOADER), name)


def install(switch: str | None) -> bool:
    """Put the loader in place when `switch` (PYDANTIC_DISABLE_PLUGINS, as pmd runs with
    it) turns every plugin off and pydantic's own loader is not imported yet; whether it
    was put in place."""
    if switch not in ALL_OFF or LOADER in sys.modules:
        return False
    sys.modules[LOADER] = _Loader(LOADER, __doc__)
    return True
