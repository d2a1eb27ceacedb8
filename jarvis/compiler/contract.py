"""What the generated code and the runtime agree on, apart from the language itself.

A step function (see `jarvis.compiler.lower.blocks`) returns a step result whose first
item is one of the kinds below; its own variables, named in `STEP_INTERNALS`, are never
saved in a frame. An unpack guard reads the shape of its target from an `UnpackSpec`
constant, and the f-strings `jarvis.compiler.emit` rewrites call the helpers of
`runtime_names`. The runtime imports these from here, a module that imports nothing of
the compiler, so that running a program does not load the compiler's pipeline.
"""

from __future__ import annotations

from typing import Any, Final

# Step results.
RETURN: Final = 0
BOOK: Final = 1
CALL: Final = 2
SLEEP: Final = 3
CHECKPOINT: Final = 4
ARTIFACT: Final = 5

STEP_INTERNALS: Final = frozenset({
    "_jv_F", "_jv_mode", "_jv_V", "_jv_D", "_jv_pc", "_jv_e", "_jv_h",
})
"""Names the step function uses for itself; never saved in a frame."""

UnpackSpec = tuple[int, bool, tuple[tuple[int, Any], ...]]
"""How a tuple or list target unpacks, a constant of the code the unpack guards read:
the number of plain targets, whether one is starred, and for each nested target its
index (negative when it follows the starred one) and its own spec."""


def runtime_names() -> dict[str, object]:
    """The helpers the rewritten f-strings call, for a namespace that runs the text."""
    return {"_jv_format": format, "_jv_str": str, "_jv_repr": repr, "_jv_ascii": ascii}
