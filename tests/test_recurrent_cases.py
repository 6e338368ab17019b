"""Gradient cases of the recurrent cells, for the registry-driven checks (tests/test_ops.py)
and tests/test_recurrent.py: name -> (f, arrays), f taking one Tensor per array.

Every cell runs through its step node (batched state, unbatched state broadcast over the
batch, single vector) and its sequence node; the arrays are the input, the initial
state(s) and every weight, so each case differentiates with respect to all of them. The
LSTM has cases where only h, only c, or both carry gradient out of the node.
"""
import numpy as np

import recur as rc
from recur.recurrent import GRUCell, GRUv3Cell, LSTMCell, RNNCell

N_IN, N_OUT, BATCH, TIME = 3, 2, 2, 3
_rng = np.random.default_rng(7)

# name -> (input shape, batched initial state)
INPUTS = {
    "step": ((BATCH, N_IN), True),
    "step broadcast state": ((BATCH, N_IN), False),
    "step vector": ((N_IN,), False),
    "sequence": ((TIME, BATCH, N_IN), True),
    "sequence broadcast state": ((TIME, BATCH, N_IN), False),
}


def _flat(*tensors):
    return rc.concat([rc.reshape(t, (-1,)) for t in tensors])


# What a case differentiates: the output y (Y for a sequence) and the new (final) state.
READS = {"": lambda h, y: _flat(y, h)}
LSTM_READS = {
    " (h and c)": lambda state, y: _flat(y, *state),
    " (y only)": lambda state, y: y,
    " (h only)": lambda state, y: state[0],
    " (c only)": lambda state, y: state[1],
}


def _case(cell, read):
    """f(x, *states, *weights): puts the weights into `cell`, runs it, reads the result."""
    names = list(type(cell).weight_shapes(N_IN, N_OUT))
    n_states = type(cell).n_states

    def f(x, *rest):
        for name, w in zip(names, rest[n_states:]):
            setattr(cell, name, w)
        state = rest[0] if n_states == 1 else tuple(rest[:n_states])
        return read(*cell(state, x))
    return f


def _build_cases():
    cells = {f"rnn {act.__name__}": (RNNCell(N_IN, N_OUT, act, dtype=np.float64), READS)
             for act in (rc.tanh, rc.relu, rc.sigmoid, rc.identity)}
    cells["lstm"] = (LSTMCell(N_IN, N_OUT, dtype=np.float64), LSTM_READS)
    cells["gru"] = (GRUCell(N_IN, N_OUT, dtype=np.float64), READS)
    cells["gruv3"] = (GRUv3Cell(N_IN, N_OUT, dtype=np.float64), READS)
    cases = {}
    for label, (cell, reads) in cells.items():
        # Random weights rather than the initial ones: nonzero biases, no symmetric zeros.
        weights = [_rng.standard_normal(shape)
                   for shape in type(cell).weight_shapes(N_IN, N_OUT).values()]
        for path, (x_shape, batched) in INPUTS.items():
            state_shape = (BATCH, N_OUT) if batched else (N_OUT,)
            for read_name, read in reads.items():
                arrays = ([_rng.standard_normal(x_shape)]
                          + [_rng.standard_normal(state_shape) for _ in range(type(cell).n_states)]
                          + weights)
                cases[f"{label} {path}{read_name}"] = (_case(cell, read), arrays)
    return cases


RECURRENT_CASES = _build_cases()
