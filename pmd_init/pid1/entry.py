"""pmd_init's entry: the boot plan's programs first (pid1/early.py); without a plan, the
boot programs once the configuration validates (pid1/firstboot.py); then pmd's start
(pid1/main.py), whose imports are what both let programs not wait for."""

from __future__ import annotations

import os
import sys

from . import signals
from .early import REEXEC_ENV, boot_early


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if (args and (args[0] == "--compat" or args[0].startswith("--compat="))) \
            or REEXEC_ENV in os.environ:
        from .main import main as start

        start(args)
        return
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
    from .main import start_with

    start_with(early)
