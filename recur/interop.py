"""`from_torch`: a PyTorch module as a recur model with the same outputs.

    model = recur.from_torch(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh()))

torch is imported inside `from_torch` only, so recur itself never needs it.
"""
import numpy as np

from recur import ops
from recur.layers import Chain, Dense

__all__ = ["from_torch"]

_ACTIVATIONS = {"Tanh": ops.tanh, "ReLU": ops.relu, "Sigmoid": ops.sigmoid,
                "Identity": ops.identity}

# The nonlinearity names of torch's RNN and RNNCell.
_RNN_NONLINEARITIES = {"tanh": ops.tanh, "relu": ops.relu}


def from_torch(module):
    """Converts a `torch.nn` module into a recur model that computes the same outputs.

    Supported modules and what they become:

    - `Linear` → `Dense` (no bias if the Linear has none);
    - `RNN` (tanh or relu), `LSTM`, `GRU` with one layer, one direction and no `proj_size`
      → `Recur` around `RNNCell`, `LSTMCell`, `GRUCell`;
    - `RNNCell`, `LSTMCell`, `GRUCell` → the recur cell;
    - `Tanh`, `ReLU`, `Sigmoid`, `Identity` → `recur.tanh`, `relu`, `sigmoid`, `identity`;
    - `Sequential` of these → `Chain`, one entry per torch entry (nested Sequentials become
      nested Chains). Unlike torch's, the Chain may hold recurrent layers: a recur `Recur`
      returns only its outputs, so `Sequential(LSTM(8, 16), Linear(16, 4))` converts to a
      working `Chain(LSTM, Dense)` although torch cannot run that Sequential itself.

    The weights are copied (the two models share no memory) and keep their dtype, float32
    or float64; other dtypes raise `TypeError` (call `module.float()` first). torch's two
    recurrent biases `bias_ih + bias_hh` become recur's single `b`. The recur cell's
    `state0` is zeros, torch's default initial state; as usual in recur it is trainable.

    Differences to know when porting code:

    - recur is time-major and takes the state in the cell call: a converted `LSTM` takes
      `(time, batch, features)` sequences (or one `(batch, features)` step), returns only
      the outputs and keeps the final state in `.state`; a converted `LSTMCell` is called
      `(h, c), y = cell((h, c), x)` where torch calls `h, c = cell(x, (h, c))`.
    - A 2-D input to a recurrent layer is one step of a batch in recur, whereas torch reads
      it as an unbatched sequence.

    Raises `ValueError` for settings recur's layers cannot reproduce — `num_layers > 1`,
    `bidirectional`, `proj_size`, `batch_first` (see the message for the one-line fix), and
    a GRU whose `bias_hh` has a nonzero n block (recur's GRU follows Flux, which adds that
    bias outside the reset gate's product) — and `TypeError` for any other module type.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    kind = type(module).__name__
    converter = _CONVERTERS.get(kind)
    # Matching by name finds torch's own classes; the isinstance check keeps a user's
    # subclass with a custom forward (or an unrelated class of the same name) out.
    if converter is None or type(module) is not getattr(torch.nn, kind, None):
        raise TypeError(f"from_torch: cannot convert a {type(module).__module__}.{kind}; "
                        f"supported torch.nn modules: {', '.join(SUPPORTED)}")
    return converter(module)


def _array(tensor, owner):
    """A numpy copy of a torch parameter, keeping float32 or float64."""
    array = tensor.detach().cpu().numpy()
    if array.dtype not in (np.float32, np.float64):
        raise TypeError(f"from_torch: {owner} has {array.dtype} weights; recur computes in "
                        "float32 or float64 (convert the module with .float() or .double())")
    return array.copy()


def _linear(module):
    W = _array(module.weight, "Linear")
    b = None if module.bias is None else _array(module.bias, "Linear")
    return Dense.from_weights(W, b)


def _activation(module):
    return _ACTIVATIONS[type(module).__name__]


def _sequential(module):
    return Chain(*(from_torch(layer) for layer in module))


# ---------------------------------------------------------------- recurrent layers and cells

def _cell_weights(module, kind):
    """(Wi, Wh, b) of a torch recurrent cell or single-layer module, with the two biases
    summed into one."""
    suffix = "_l0" if hasattr(module, "num_layers") else ""
    Wi = _array(getattr(module, f"weight_ih{suffix}"), kind)
    Wh = _array(getattr(module, f"weight_hh{suffix}"), kind)
    if not module.bias:
        return Wi, Wh, np.zeros(Wi.shape[0], dtype=Wi.dtype)
    b_ih = _array(getattr(module, f"bias_ih{suffix}"), kind)
    b_hh = _array(getattr(module, f"bias_hh{suffix}"), kind)
    if kind.startswith("GRU"):
        _check_gru_bias(b_hh, kind)
    return Wi, Wh, b_ih + b_hh


def _check_gru_bias(b_hh, kind):
    hidden = b_hh.shape[0] // 3
    b_hn = b_hh[2 * hidden:]
    if np.any(b_hn != 0):
        raise ValueError(
            f"from_torch: this {kind} has a nonzero n block in bias_hh (b_hn, max |b_hn| = "
            f"{np.abs(b_hn).max():.3g}). torch computes n = tanh(W_in x + b_in + r * (W_hn h + "
            "b_hn)), with b_hn inside the reset gate's product; recur's GRU follows Flux, "
            "n = tanh(W_in x + b_n + r * (W_hn h)), which has no such term, so the outputs "
            "would differ. Train the torch GRU with bias_hh[2*hidden:] held at zero, or "
            "construct it with bias=False, to convert it exactly.")


def _rnn_activation(module, kind):
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    if nonlinearity not in _RNN_NONLINEARITIES:
        raise ValueError(f"from_torch: {kind} nonlinearity {nonlinearity!r} is not supported "
                         f"(expected one of {sorted(_RNN_NONLINEARITIES)})")
    return _RNN_NONLINEARITIES[nonlinearity]


def _check_layer_settings(module, kind):
    """Rejects the options of torch's RNN modules that a single recur Recur cannot express."""
    if module.num_layers != 1:
        raise ValueError(
            f"from_torch: {kind} has num_layers={module.num_layers}; recur converts a single "
            f"layer. Stack layers as a Chain of one-layer {kind}s (each torch layer l has "
            f"weights weight_ih_l{{l}}, weight_hh_l{{l}}, ...).")
    if module.bidirectional:
        raise ValueError(f"from_torch: {kind} has bidirectional=True; recur's recurrent "
                         "layers run forwards in time only")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"from_torch: {kind} has proj_size={module.proj_size}; recur's LSTM "
                         "has no output projection")
    if module.batch_first:
        raise ValueError(
            f"from_torch: {kind} has batch_first=True, but recur's recurrent layers are "
            "time-major: a sequence is (time, batch, features). The weights do not depend on "
            "the layout, so set module.batch_first = False before converting and give the "
            "recur model time-major arrays (x.transpose(1, 0, 2) of a batch-first x).")
    # A one-layer module's dropout acts between layers, so here it never applies (torch
    # itself warns that it has no effect): the conversion is exact and it is accepted.


def _cell_for(module, kind):
    from recur.recurrent import GRUCell, LSTMCell, RNNCell

    Wi, Wh, b = _cell_weights(module, kind)
    if kind.startswith("RNN"):
        return RNNCell.from_weights(Wi, Wh, b, σ=_rnn_activation(module, kind))
    if kind.startswith("LSTM"):
        return LSTMCell.from_weights(Wi, Wh, b)
    return GRUCell.from_weights(Wi, Wh, b)


def _recurrent_layer(module):
    from recur.recurrent import Recur

    kind = type(module).__name__
    _check_layer_settings(module, kind)
    return Recur(_cell_for(module, kind))


def _recurrent_cell(module):
    return _cell_for(module, type(module).__name__)


_CONVERTERS = {
    "Linear": _linear,
    "RNN": _recurrent_layer, "LSTM": _recurrent_layer, "GRU": _recurrent_layer,
    "RNNCell": _recurrent_cell, "LSTMCell": _recurrent_cell, "GRUCell": _recurrent_cell,
    **{name: _activation for name in _ACTIVATIONS},
    "Sequential": _sequential,
}
SUPPORTED = tuple(_CONVERTERS)
