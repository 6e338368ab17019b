"""Loss functions `loss(ŷ, y, *, agg=mean)`, built from recur's ops. Class probabilities
lie along the last axis."""
import numpy as np

from recur import ops
from recur._core import ops_loss
from recur.tensor import Tensor, result_dtype

__all__ = ["mse", "mae", "crossentropy", "logitcrossentropy", "binarycrossentropy",
           "logitbinarycrossentropy", "huber_loss", "kldivergence"]

EPS = 1e-7


def _shape(a):
    return a.shape if isinstance(a, (Tensor, np.ndarray)) else np.shape(a)


def _pair(name, ŷ, y):
    ŷ_shape, y_shape = _shape(ŷ), _shape(y)
    if ŷ_shape != y_shape:
        raise ValueError(f"recur.{name}: prediction and target shapes differ: ŷ has shape "
                         f"{ŷ_shape}, y has shape {y_shape}")


def mse(ŷ, y, *, agg=ops.mean):
    """agg((ŷ - y)²)"""
    if agg is ops.mean:
        # A prediction against a target of its dtype and shape, as a stepwise loop has once
        # a step, goes straight to the fused node.
        out = ops_loss.same_shape_squared_error(ŷ, y)
        if out is not None:
            return out
    _pair("mse", ŷ, y)
    if agg is ops.mean:      # one fused node (_core/ops_loss.pyx)
        dtype = result_dtype(ŷ, y)
        ŷ_value, ŷ = ops._operand(ŷ, dtype)
        y_value, y = ops._operand(y, dtype)
        return ops_loss.squared_error_mean(ŷ, y, ŷ_value, y_value)
    return agg(ops.square(ops.sub(ŷ, y)))


def mae(ŷ, y, *, agg=ops.mean):
    """agg(|ŷ - y|)"""
    _pair("mae", ŷ, y)
    return agg(ops.abs(ops.sub(ŷ, y)))


def crossentropy(ŷ, y, *, agg=ops.mean, eps=EPS):
    """agg(-Σ y log(ŷ + eps)) over the last axis; ŷ are probabilities."""
    _pair("crossentropy", ŷ, y)
    return agg(ops.neg(ops.sum(ops.mul(y, ops.log(ops.add(ŷ, eps))), axis=-1)))


def logitcrossentropy(ŷ, y, *, agg=ops.mean):
    """crossentropy(softmax(ŷ), y), computed stably from the logits ŷ."""
    _pair("logitcrossentropy", ŷ, y)
    return agg(ops.neg(ops.sum(ops.mul(y, ops.logsoftmax(ŷ, axis=-1)), axis=-1)))


def binarycrossentropy(ŷ, y, *, agg=ops.mean, eps=EPS):
    """agg(-y log(ŷ + eps) - (1 - y) log(1 - ŷ + eps)); ŷ are probabilities."""
    _pair("binarycrossentropy", ŷ, y)
    positive = ops.mul(y, ops.log(ops.add(ŷ, eps)))
    negative = ops.mul(ops.sub(1, y), ops.log(ops.add(ops.sub(1, ŷ), eps)))
    return agg(ops.neg(ops.add(positive, negative)))


def logitbinarycrossentropy(ŷ, y, *, agg=ops.mean):
    """binarycrossentropy(sigmoid(ŷ), y), computed stably from the logits ŷ:
    (1 - y) ŷ + softplus(-ŷ)."""
    _pair("logitbinarycrossentropy", ŷ, y)
    return agg(ops.add(ops.mul(ops.sub(1, y), ŷ), ops.softplus(ops.neg(ŷ))))


def huber_loss(ŷ, y, *, agg=ops.mean, delta=1.0):
    """agg of ½(ŷ-y)² where |ŷ-y| ≤ δ, δ(|ŷ-y| - ½δ) elsewhere."""
    _pair("huber_loss", ŷ, y)
    diff = ops.sub(ŷ, y)
    small = np.abs(diff.value) <= delta
    quadratic = ops.mul(0.5, ops.square(diff))
    linear = ops.mul(delta, ops.sub(ops.abs(diff), 0.5 * delta))
    return agg(ops.where(small, quadratic, linear))


def kldivergence(ŷ, y, *, agg=ops.mean, eps=EPS):
    """agg(Σ y (log(y + eps) - log(ŷ + eps))) over the last axis: KL(y ‖ ŷ)."""
    _pair("kldivergence", ŷ, y)
    entropy_term = ops.sum(ops.mul(y, ops.log(ops.add(y, eps))), axis=-1)
    cross_term = ops.sum(ops.mul(y, ops.log(ops.add(ŷ, eps))), axis=-1)
    return agg(ops.sub(entropy_term, cross_term))
