"""pmd_init's entry: the boot plan's programs first (pid1/early.py), then pmd's start
(pid1/main.py), whose imports are what the boot plan lets programs not wait for."""

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
    early = boot_early(settings, inherited_mask, os.environ, os.getpid())
    from .main import start_with

    start_with(early)
