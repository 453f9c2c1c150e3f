"""Command line clients: `pmd` (pmd.py) talks to a running pmd over its socket or HTTP."""
