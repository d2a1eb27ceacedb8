"""The one build step pyproject.toml cannot state in a stable form: the C extensions.

`jarvis.runtime._hooks` (jarvis/runtime/_hooks.c, the trace hooks),
`jarvis.runtime._tracebatch` (jarvis/runtime/_tracebatch.c, trace batches on the
channel) and `jarvis.runtime._process` (jarvis/runtime/_process.c, a child's prctl calls
and its time limits' signal handler) are optional: where they cannot be built (no
compiler, no Python headers) the install goes on without them and the runtime uses the
same code written in Python (`jarvis.runtime.trace`, `jarvis.runtime.tracebatch`;
ctypes and a watchdog thread for `_process`). Everything else about the
package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("jarvis.runtime._hooks", ["jarvis/runtime/_hooks.c"], optional=True),
        Extension("jarvis.runtime._tracebatch", ["jarvis/runtime/_tracebatch.c"],
                  optional=True),
        Extension("jarvis.runtime._process", ["jarvis/runtime/_process.c"], optional=True),
    ],
)
