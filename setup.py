"""Build of recur: every `_core/*.pyx` becomes the extension module `recur._core.<name>`."""
import os
import platform
import shutil
import subprocess

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(HERE, "_core")

# Cython resolves `from recur._core cimport tape` as recur/_core/tape.pxd on its include path,
# while the sources live in _core/. Mirror the interfaces into a build-only include tree.
PXD_ROOT = os.path.join(HERE, "build", "pxd")
pxd_dir = os.path.join(PXD_ROOT, "recur", "_core")
os.makedirs(pxd_dir, exist_ok=True)
for pkg in (os.path.join(PXD_ROOT, "recur"), pxd_dir):
    open(os.path.join(pkg, "__init__.pxd"), "w").close()
for name in os.listdir(CORE):
    if name.endswith(".pxd"):
        shutil.copyfile(os.path.join(CORE, name), os.path.join(pxd_dir, name))

# recur is built where it runs (pip compiles it from source), so its own loops — the gate
# activations above all — may use every vector instruction of this CPU. Set
# RECUR_PORTABLE=1 to build binaries for any x86-64/arm64 machine of the same kind instead.
ARCH_FLAGS = [] if os.environ.get("RECUR_PORTABLE") else ["-march=native"]

# GCC gives up vectorising a loop once proving its pointers apart takes more than 10 runtime
# checks; the cells' backward loops (ops_rnn.pyx) read and write about a dozen arrays each.
GCC_FLAGS = ["--param", "vect-max-version-for-alias-checks=64"]


def is_gcc(command):
    try:
        banner = subprocess.run([command, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "Free Software Foundation" in banner and "clang" not in banner


# The gate activations (ops_rnn.pyx, and ops_dense.pyx's for the RNN cell and Dense) are
# long chains of vector arithmetic per value. GCC on CPUs with AVX-512 still vectorises
# loops with 256-bit registers unless told otherwise; at 512 bits the LSTM's elementwise
# pass takes a fifth less time (bench/: LSTM 64,256,64,100 inference, 1 thread, 27.1 ->
# 25.9 ms; 2 threads 14.0 -> 13.5; RNN stepwise 7.72 -> 7.62). The panel kernel picks its
# own width (panel_gemm.h), so only the activations change.
WIDE_VECTOR_MODULES = {"ops_rnn", "ops_dense"}
WIDE_VECTOR_FLAGS = ["-mprefer-vector-width=512"]


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "unix" and is_gcc(self.compiler.compiler_so[0]):
            for extension in self.extensions:
                extension.extra_compile_args += GCC_FLAGS
                if ARCH_FLAGS and platform.machine() in ("x86_64", "AMD64"):
                    if extension.name.rsplit(".", 1)[-1] in WIDE_VECTOR_MODULES:
                        extension.extra_compile_args += WIDE_VECTOR_FLAGS
        super().build_extensions()


extensions = [
    Extension(
        f"recur._core.{name[:-4]}",
        [os.path.join("_core", name)],
        include_dirs=[numpy.get_include(), CORE],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=["-O3", "-fno-math-errno", "-Wno-unused-function"] + ARCH_FLAGS,
    )
    for name in sorted(os.listdir(CORE))
    if name.endswith(".pyx")
]

setup(
    packages=["recur", "recur._core"],
    package_dir={"recur": "recur", "recur._core": "_core"},
    package_data={"recur._core": ["*.pxd", "*.h"]},
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        include_path=[PXD_ROOT],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
