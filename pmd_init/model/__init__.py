"""What a program is: its configuration (spec.py: ProgramSpec and its parts), the states it
can be in (states.py: ProgramState and the allowed transitions), and the rules its webhook
URLs and headers must pass (webhook_rules.py).

A leaf: nothing here imports anything else of pmd, so the store, the supervisor and the API
all build on it. Nothing is re-exported here either: importing the states does not import
pydantic.
"""
