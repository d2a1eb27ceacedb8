"""Spec Book `ledger`: remembers what it was sent, so a program can check call order.

The state lives in this module, which the registry loads once per BookRegistry; the
spec runner loads a fresh registry for every program.
"""

ENTRIES = []


def record(entry):
    ENTRIES.append(entry)
    return len(ENTRIES)


def entries():
    return list(ENTRIES)
