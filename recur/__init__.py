"""recur: automatic differentiation for recurrent neural networks — a C tape with BLAS
products, Flux-style cells, the stateful Recur wrapper, and training on the CPU."""


def _reach_installed_core():
    """Run from a source checkout (`python -m recur` or pytest in the repository), this
    package shadows the installed one, whose compiled `_core` modules live only in
    site-packages. Extend the package path to the installed copy so they are found."""
    import importlib.util
    import os
    import sys
    if importlib.util.find_spec("recur._core") is not None:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        installed = os.path.join(os.path.abspath(entry or os.curdir), "recur")
        if installed != here and os.path.isdir(os.path.join(installed, "_core")):
            __path__.append(installed)
            return


_reach_installed_core()
from recur.tensor import Tensor, Param, param, Params, Grads, params, gradient, value_and_gradient
from recur.ops import (
    tanh, sigmoid, σ, relu, leakyrelu, elu, softplus, exp, log, sqrt, abs, square, sum, mean,
    max, softmax, logsoftmax, reshape, transpose, concat, stack, where, clip, detach, identity,
)
from recur.gradcheck import check_gradients
from recur.layers import (
    Dense, Chain, Embedding, Dropout, glorot_uniform, glorot_normal, zeros, ones, seed,
)
from recur.losses import (
    mse, mae, crossentropy, logitcrossentropy, binarycrossentropy, logitbinarycrossentropy,
    huber_loss, kldivergence,
)
from recur.optimise import (
    Descent, Momentum, Nesterov, RMSProp, Adam, ADAM, AdamW, ClipNorm, ClipValue, OptimiserChain,
    update,
)
from recur.recurrent import (
    RNNCell, LSTMCell, GRUCell, GRUv3Cell, Recur, RNN, LSTM, GRU, GRUv3, reset, truncate, unroll,
)
from recur.train import train, StopTraining
from recur.data import DataLoader
from recur.io import save, load
from recur.interop import from_torch

__version__ = "0.1.0"
