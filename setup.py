"""Build hook for the one compiled part: the pass-1 kernel of the degradation fast path (Eq. 16).

Everything else about the package is in pyproject.toml. The extension is optional: where it cannot be
built (no C compiler, not x86-64), installation goes on and ``prefrestore.data.degrade.fast`` uses its
numpy/BLAS path, which computes the same result to float32 rounding.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "prefrestore.data.degrade._kernels",
            sources=["src/prefrestore/data/degrade/_kernels.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
