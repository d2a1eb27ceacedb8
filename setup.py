"""The one build step pyproject.toml cannot state in a stable form: the C trace hooks.

`jarvis.runtime._hooks` (jarvis/runtime/_hooks.c) is optional: where it cannot be built
(no compiler, no Python headers) the install goes on without it and the trace uses the
same hooks written in Python (`jarvis.runtime.trace`). Everything else about the
package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("jarvis.runtime._hooks", ["jarvis/runtime/_hooks.c"], optional=True),
    ],
)
