"""pmd_init's entry: the boot plan's programs first (pid1/early.py); without a plan, the
boot programs once the configuration validates (pid1/firstboot.py); then pmd's start
(pid1/main.py), whose imports are what both let programs not wait for."""

from __future__ import annotations

import gc
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .early import EarlyBoot


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # Until the early programs are spawned, the start imports modules and builds classes
    # and validators, all of which live as long as pmd: the collector's passes over them
    # find next to no garbage, and took 6 to 10 ms of CPU before a first start's first
    # spawn (docs/performance.md). It collects as usual from then on.
    gc.disable()
    try:
        early = boot(args)
    finally:
        gc.enable()
    if early is None:
        from .main import main as start

        start(args)
        return
    from .main import start_with

    start_with(early)


def boot(args: list[str]) -> EarlyBoot | None:
    """The boot plan's programs, or without a plan the boot programs of a configuration
    that validates, spawned; None for the starts that pid1/main.py's main() takes whole
    (a compatibility start, a re-exec)."""
    from . import signals
    from .early import REEXEC_ENV, boot_early

    if (args and (args[0] == "--compat" or args[0].startswith("--compat="))) \
            or REEXEC_ENV in os.environ:
        return None
    from ..settings import parse_settings

    # First of all, as pid1/main.py's main(): a mask inherited from the caller would hold
    # back TERM, and would pass on to every program.
    inherited_mask = signals.reset_mask()
    settings = parse_settings(args)
    if settings.tls_cert is not None:
        from .main import check_tls

        check_tls(settings)  # a TLS file that does not load stops the start first
    environ = dict(os.environ)  # what programs start from: before pmd sets its own
    early = boot_early(settings, inherited_mask, environ, os.getpid())
    if early.plan is None and early.may_spawn:
        # What the models read from os.environ, as pid1/main.py's start sets it: the
        # webhook rules' switch (the same validation as the start's load), and no
        # plugin scan of every installed distribution at pydantic's first model; nor,
        # then, the imports of pydantic's plugin lookup (pid1/noplugins.py).
        if settings.webhook_allow_local:
            from ..model.webhook_rules import ALLOW_LOCAL_ENV

            os.environ[ALLOW_LOCAL_ENV] = "1"
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
        from . import noplugins

        noplugins.install(os.environ["PYDANTIC_DISABLE_PLUGINS"])
        from .firstboot import start_validated

        start_validated(early, environ)
    return early
