"""Compiled engine of recur: the tape, BLAS products and the op kernels."""


def _load_blas_without_scipy_linalg():
    """The kernels call BLAS through scipy.linalg.cython_blas, and importing it the usual
    way first runs scipy.linalg's __init__, which costs more than the rest of `import recur`
    together. Load the extension module from its file instead; a later `import scipy.linalg`
    finds it already loaded."""
    import importlib.util
    import os
    import sys
    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules:
        return
    scipy_spec = importlib.util.find_spec("scipy")
    if scipy_spec is None or scipy_spec.origin is None:
        return
    linalg_dir = os.path.join(os.path.dirname(scipy_spec.origin), "linalg")
    for file in sorted(os.listdir(linalg_dir)):
        if file.startswith("cython_blas.") and file.endswith((".so", ".pyd")):
            spec = importlib.util.spec_from_file_location(name, os.path.join(linalg_dir, file))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return


_load_blas_without_scipy_linalg()
