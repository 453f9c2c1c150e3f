"""What a program is: its configuration (spec.py: ProgramSpec and its parts), the states it
can be in (states.py: ProgramState and the allowed transitions), and the rules its webhook
URLs and headers must pass (webhook_rules.py).

A leaf: nothing here imports anything else of pmd, so the store, the supervisor and the API
all build on it. Nothing is re-exported here either: importing the states does not import
pydantic.

The pydantic models of a program (spec.py, policies.py, hooks.py, sockets.py,
logtargets.py) are read before any boot program starts, so their annotations are not
postponed (no `from __future__ import annotations`): pydantic would compile and evaluate
each annotation string when it builds the class: a quarter of the models' build time
(docs/performance.md). A method naming its own class quotes it.
"""
