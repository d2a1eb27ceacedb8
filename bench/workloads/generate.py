"""A SPy program of a given number of lines, for the compile rows.

The program looks like a long automation: many small functions with loops, branches,
dicts and f-strings, Book calls at the top level and inside functions (so the lowering
has resumable frames to build), and `try`/`except BookError` around some of them.
It is deterministic, so the cold and cached timings compile the same text.

    python -m bench.workloads.generate 1000 > program.spy
"""

from __future__ import annotations

import sys

_HEADER = """\
from books import crm, erp

summary = []
checked = 0
"""

_FOOTER = 'output("summary", len(summary))\n'

_PLAIN_BLOCK = """\

def score_{k}(items, limit=10):
    total = 0
    seen = {{}}
    for index, item in enumerate(items):
        if item % 3 == 0:
            total += item * {k}
        elif item % 5 == 0:
            total -= item // 2
        else:
            seen[str(item)] = index
    while total > limit * 100:
        total = total // 2
    return {{"step": {k}, "total": total, "seen": len(seen)}}


result_{k} = score_{k}([value + {k} for value in range(20)])
if result_{k}["total"] > 50:
    reply_{k} = crm.update(id=f"L-{k}", total=result_{k}["total"])
else:
    try:
        reply_{k} = erp.lookup(result_{k}["seen"])
    except BookError as error:
        reply_{k} = {{"error": str(error), "step": {k}}}
summary.append(reply_{k})
"""

_BOOK_BLOCK = """\

def sync_{k}(names):
    created = []
    for name in names:
        lead = crm.create_lead(name=name, score=len(name) % 5)
        if lead.get("duplicate"):
            continue
        created.append(lead)
    return created


leads_{k} = sync_{k}([f"customer {k}-{{n}}" for n in range(3)])
summary.extend(leads_{k})
"""


def generate_program(lines: int = 1000) -> str:
    """SPy source of exactly `lines` lines (at least 20)."""
    if lines < 20:
        raise ValueError("the generated program needs at least 20 lines")
    parts = [_HEADER]
    used = _HEADER.count("\n") + _FOOTER.count("\n")
    k = 0
    while True:
        block = (_BOOK_BLOCK if k % 4 == 3 else _PLAIN_BLOCK).format(k=k)
        if used + block.count("\n") > lines:
            break
        parts.append(block)
        used += block.count("\n")
        k += 1
    parts.extend("checked = checked + 1\n" for _ in range(lines - used))
    parts.append(_FOOTER)
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(generate_program(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
