"""Build hook for the two optional C kernels; all metadata lives in pyproject.toml.

`optional=True` means a machine without a C compiler still installs the package: shared.png_fast
then reports the fast path as unavailable and callers use Pillow, and shared.resize converts 8-bit
images to float before its sparse product.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shared._png_unfilter",
            ["shared/_png_unfilter.c"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
        Extension(
            "shared._resample",
            ["shared/_resample.c"],
            optional=True,
            extra_compile_args=["-O3", "-ffp-contract=off"],
        ),
    ]
)
