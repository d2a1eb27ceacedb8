"""Spec Book `failing`: procedures that fail in the ways a Book call can fail."""

KINDS = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "PermissionError": PermissionError,
    "RuntimeError": RuntimeError,
}


def fail(kind, message):
    raise KINDS[kind](message)


def not_json():
    # A set is not a JSON value, so the call fails with error_type "InvalidResult".
    return {1, 2, 3}


def ok():
    return "fine"
