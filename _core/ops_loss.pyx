# The mean squared error as one node, forward and backward side by side.
#
# A model trained step by step computes one loss per step: composed from ops, the mean of
# (ŷ - y)² records three nodes (subtract, square, mean) and costs three times the Python
# of one, which at small sizes is most of the step (bench/, RNN 8,32,1,50 stepwise
# training: 4.1 µs of loss per step against 1 µs for the layer's kernel). recur/losses.py
# takes this node for `mse` with its default mean; any other aggregation composes the ops.
#
#   value   mean((ŷ - y)²), 0-d
#   inputs  0 ŷ, 1 y (same shape, the node's dtype)
#   ints    n, the number of values of each
from cython cimport floating
cimport numpy as cnp
import numpy as np
from recur._core.tape cimport (Node, index_t, first_write, record_pair, is_tensor,
                               tensor_value)
from recur._core.registry cimport OP_SQUARED_ERROR
from recur._core.ops_elementwise cimport same_float_shape

cnp.import_array()


def squared_error_mean(prediction, target, cnp.ndarray ŷ, cnp.ndarray y):
    """mean((ŷ - y)²) of two C-contiguous arrays of one shape and float dtype, as a
    Tensor; `prediction` and `target` are what the tape knows them by (Tensors or the
    arrays themselves)."""
    cdef index_t n = cnp.PyArray_SIZE(ŷ)
    cdef bint is_f64 = cnp.PyArray_TYPE(ŷ) == cnp.NPY_DOUBLE
    cdef cnp.ndarray value = cnp.PyArray_EMPTY(0, NULL, cnp.PyArray_TYPE(ŷ), 0)
    cdef double total
    cdef Node* node
    if is_f64:
        total = sum_of_squared_differences[double](n, <double*>cnp.PyArray_DATA(ŷ),
                                                   <double*>cnp.PyArray_DATA(y))
        (<double*>cnp.PyArray_DATA(value))[0] = total / n if n else np.nan
    else:
        total = sum_of_squared_differences[float](n, <float*>cnp.PyArray_DATA(ŷ),
                                                  <float*>cnp.PyArray_DATA(y))
        (<float*>cnp.PyArray_DATA(value))[0] = <float>(total / n) if n else np.nan
    result = record_pair(OP_SQUARED_ERROR, value, prediction, ŷ, target, y, 1, &node)
    if node != NULL:
        node.ints[0] = n
    return result


def same_shape_squared_error(prediction, target):
    """squared_error_mean for a Tensor prediction and a target (an ndarray, not a subclass,
    or a Tensor) whose values share one float dtype and one shape, C-contiguous both: what
    a stepwise loop's loss meets once a step, checked here rather than in Python. None for
    any other operands, which recur/losses.py takes on its general path."""
    cdef cnp.ndarray ŷ, y
    if not is_tensor(prediction):
        return None
    ŷ = tensor_value(prediction)
    if type(target) is cnp.ndarray:
        y = <cnp.ndarray>target
    elif is_tensor(target):
        y = tensor_value(target)
    else:
        return None
    if not same_float_shape(ŷ, y):
        return None
    return squared_error_mean(prediction, target, ŷ, y)


cdef double sum_of_squared_differences(index_t n, const floating* ŷ,
                                       const floating* y) noexcept nogil:
    # Accumulated in double (float32 inputs too): one rounding at the end, where numpy's
    # float32 mean rounds along its pairwise sums.
    cdef double total = 0, d
    cdef index_t i
    for i in range(n):
        d = <double>ŷ[i] - <double>y[i]
        total += d * d
    return total


cdef void squared_error_backward(Node* node, Node* nodes) noexcept nogil:
    if node.is_f64:
        squared_error_kernel(node, nodes, <double*>node.grad)
    else:
        squared_error_kernel(node, nodes, <float*>node.grad)


cdef void squared_error_kernel(Node* node, Node* nodes, const floating* g) noexcept nogil:
    # d/dŷ = 2 (ŷ - y) g / n, and the opposite for y.
    cdef index_t n = node.ints[0]
    cdef const floating* ŷ = <floating*>node.in_values[0]
    cdef const floating* y = <floating*>node.in_values[1]
    cdef floating scale = 2 * g[0] / n
    cdef floating* d_prediction = (<floating*>nodes[node.inputs[0]].grad
                                   if node.inputs[0] >= 0 else NULL)
    cdef floating* d_target = (<floating*>nodes[node.inputs[1]].grad
                               if node.inputs[1] >= 0 else NULL)
    cdef index_t i
    if d_prediction != NULL:
        if first_write(nodes, node.inputs[0]):
            for i in range(n):
                d_prediction[i] = scale * (ŷ[i] - y[i])
        else:
            for i in range(n):
                d_prediction[i] += scale * (ŷ[i] - y[i])
    if d_target != NULL:
        if first_write(nodes, node.inputs[1]):
            for i in range(n):
                d_target[i] = -(scale * (ŷ[i] - y[i]))
        else:
            for i in range(n):
                d_target[i] -= scale * (ŷ[i] - y[i])
