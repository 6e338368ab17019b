"""recur: automatic differentiation for recurrent neural networks — a C tape with BLAS
products, Flux-style cells, the stateful Recur wrapper, and training on the CPU."""
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

__version__ = "0.1.0"
