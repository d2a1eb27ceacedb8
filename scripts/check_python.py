"""Exit with a clear message unless this interpreter is CPython 3.11 (run by `make`).

SPy programs mean what CPython 3.11 makes of them (docs/language.md); later versions
differ in places a program can see (3.12's `sum` of floats compensates rounding), and a
durable execution resumed under another version could see its results change.
"""

import platform
import sys

if platform.python_implementation() != "CPython" or sys.version_info[:2] != (3, 11):
    sys.exit(f"Jarvis needs CPython 3.11; {sys.executable} is "
             f"{platform.python_implementation()} {platform.python_version()}. "
             "Install Python 3.11 and run make with PYTHON=/path/to/python3.11.")
