"""Build fastws._core, fastws._testing and fastws._deflate (Cython; _deflate links the system zlib).

Environment switches:
  FASTWS_DEBUG=1     bounds and wraparound checks on, -O0 -g
  FASTWS_ANNOTATE=1  write the Cython HTML annotation next to the .pyx
  FASTWS_COVERAGE=1  linetrace for coverage of the .pyx
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTWS_DEBUG") == "1"
COVERAGE = os.environ.get("FASTWS_COVERAGE") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
macros = []
if COVERAGE:
    directives["linetrace"] = True
    macros.append(("CYTHON_TRACE_NOGIL", "1"))

extensions = [
    Extension(
        name,
        [f"src/{name.replace('.', '/')}.pyx"],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
        define_macros=macros,
    )
    # _core: the hot path; _testing: in-memory transports for tests and bench/bench_core.py only
    for name in ("fastws._core", "fastws._testing")
] + [
    # permessage-deflate: zlib's C API (zlib.h from zlib1g-dev / zlib-devel)
    Extension(
        "fastws._deflate",
        ["src/fastws/_deflate.pyx"],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
        define_macros=macros,
        libraries=["z"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("FASTWS_ANNOTATE") == "1",
    ),
)
