"""`check_gradients`: analytic gradients against central finite differences."""
import numpy as np

from recur.tensor import Param, Tensor, as_array, gradient

__all__ = ["check_gradients"]

# Inputs up to this many elements are checked element by element; larger ones along
# random directions.
ELEMENTWISE_LIMIT = 200
DIRECTIONS = 12


def check_gradients(f, *arrays, dtype=np.float64, rtol=None, atol=None, eps=None, seed=0):
    """Checks the gradients of `f(*tensors)` with respect to each array.

    `f` gets one Param per array and returns a Tensor: a scalar, or any shape, which is then
    contracted with a fixed random array of that shape. Small inputs are compared element by
    element, large ones along random directions. Returns the largest relative error; raises
    AssertionError naming the input past `rtol`.
    """
    dtype = np.dtype(dtype)
    double = dtype == np.float64
    rtol = (1e-5 if double else 2e-2) if rtol is None else rtol
    atol = (1e-8 if double else 1e-3) if atol is None else atol
    eps = (1e-6 if double else 1e-2) if eps is None else eps
    rng = np.random.default_rng(seed)
    values = [as_array(a, dtype) for a in arrays]
    weights = {}

    def scalar(*inputs):
        out = f(*inputs)
        out_value = out.value if isinstance(out, Tensor) else np.asarray(out)
        if out_value.size == 1 and not isinstance(out, Tensor):
            return out
        if out_value.size == 1:
            return out.reshape(())
        if "w" not in weights:
            weights["w"] = rng.standard_normal(out_value.shape).astype(dtype)
        return (out * weights["w"]).sum()

    ps = [Param(v, dtype) for v in values]
    gs = gradient(lambda: scalar(*ps), ps)

    def evaluate(shifted):
        return float(np.asarray(scalar(*[Tensor(v) for v in shifted]).value, dtype=np.float64))

    worst = 0.0
    for k, (value, p) in enumerate(zip(values, ps)):
        analytic = gs[p]
        analytic = np.zeros_like(value) if analytic is None else analytic.astype(np.float64)
        if value.size <= ELEMENTWISE_LIMIT:
            directions = [np.eye(1, value.size, i).reshape(value.shape) for i in range(value.size)]
        else:
            directions = [rng.standard_normal(value.shape) for _ in range(DIRECTIONS)]
        for direction in directions:
            step = (eps * direction).astype(dtype)
            plus = [v + step if i == k else v for i, v in enumerate(values)]
            minus = [v - step if i == k else v for i, v in enumerate(values)]
            numeric = (evaluate(plus) - evaluate(minus)) / (2 * eps)
            exact = float(np.sum(analytic * direction))
            error = abs(numeric - exact) / max(abs(numeric), abs(exact), atol / rtol)
            worst = max(worst, error)
            if error > rtol:
                where = (f"element {np.unravel_index(int(np.argmax(direction)), value.shape)}"
                         if value.size <= ELEMENTWISE_LIMIT else "a random direction")
                raise AssertionError(
                    f"gradient of input {k} (shape {value.shape}) at {where}: analytic "
                    f"{exact:.10g}, finite difference {numeric:.10g}, relative error "
                    f"{error:.3g} > {rtol:g}")
    return worst
