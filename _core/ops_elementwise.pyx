# Backward of elementwise ops. Forward values come from numpy (recur/ops.py) in the node's
# dtype, but for +, - and * between two Tensors of one shape (same_shape_arithmetic) and for
# sigmoid, which numpy lacks (logistic_values); each backward here reads the forward's input
# values or its own value, whichever makes the derivative cheapest.
#
# Binary ops broadcast: node.ints = [ndim, shape[ndim], strides_a[ndim], strides_b[ndim]]
# over the output's shape, with stride 0 along the axes an input is broadcast on. Adding
# into a stride-0 gradient sums over that axis, which is exactly the reduction broadcasting
# asks for in backward.
from libc.math cimport tanh, exp, log, sqrt, fabs, pow
from cython cimport floating
cimport numpy as cnp
from recur._core.tape cimport Node, index_t, is_tensor, record_pair, tensor_value
from recur._core.registry cimport *
from recur._core.strided cimport next_row
from recur._core.pool cimport new_array
from recur._core.fastmath cimport logistic_in_place

cnp.import_array()


# ---------------------------------------------------------------- forward

cdef bint same_float_shape(cnp.ndarray x, cnp.ndarray y) noexcept:
    return (cnp.PyArray_TYPE(x) == cnp.PyArray_TYPE(y)
            and (cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT or cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE)
            and x.ndim == y.ndim and cnp.PyArray_SAMESHAPE(x, y)
            and cnp.PyArray_ISCARRAY_RO(x) and cnp.PyArray_ISCARRAY_RO(y))


def same_shape_arithmetic(int op, object a, object b):
    """a + b, a - b or a * b (op OP_ADD, OP_SUB or OP_MUL) for two Tensors whose values
    share one float dtype and one shape, computed and recorded in one call: a stepwise
    loss's running sum of step losses goes through here once a step, where numpy's
    dispatch on 0-d arrays and recur/ops.py's general path cost several microseconds. None
    for any other operands, which that path takes. The same IEEE operations as numpy's,
    so the same values."""
    cdef cnp.ndarray x, y, out
    cdef Node* node
    cdef index_t n
    if not (is_tensor(a) and is_tensor(b)):
        return None
    x, y = tensor_value(a), tensor_value(b)
    if not same_float_shape(x, y):
        return None
    out = new_array(x.ndim, cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x))
    n = cnp.PyArray_SIZE(out)
    if cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE:
        arithmetic_forward(op, n, <double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(y),
                           <double*>cnp.PyArray_DATA(out))
    else:
        arithmetic_forward(op, n, <float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(y),
                           <float*>cnp.PyArray_DATA(out))
    result = record_pair(op, out, a, x, b, y, 4, &node)
    if node != NULL:
        # binary_backward's layout of one flat axis, both inputs read with stride 1
        node.ints[0], node.ints[1], node.ints[2], node.ints[3] = 1, n, 1, 1
    return result


def logistic_values(cnp.ndarray v):
    """1 / (1 + e^-v) of a float32 or float64 array, as a new C-contiguous array of its
    dtype: the cells' logistic (fastmath.pxd), which keeps its relative precision in both
    tails. numpy has two ways: the stable form, e^-|v| / (1 + e^-|v|) below 0, and
    1/2 + tanh(v/2)/2, which cancels below 0. `rc.sigmoid` of a Tensor of 32 x 128 float32
    values took 10.5 µs the first way and 3.85 µs the second; here it takes 2.0 µs."""
    cdef cnp.ndarray src = cnp.PyArray_GETCONTIGUOUS(v)
    cdef cnp.ndarray out = cnp.PyArray_NewCopy(src, cnp.NPY_CORDER)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(out), i
    cdef const float* x
    cdef float* y
    cdef bint below = False
    if cnp.PyArray_TYPE(out) == cnp.NPY_FLOAT:
        x, y = <const float*>cnp.PyArray_DATA(src), <float*>cnp.PyArray_DATA(out)
        with nogil:
            logistic_in_place(n, y)
            # The float32 logistic clamps e^-v at e^88, which leaves 6.1e-39 for every v
            # below -88 (-inf too): nothing to a gate, but the op's values there are
            # libm's, in double, down to 0 at -inf. (A first pass looks for them: it
            # vectorises, and the loop with libm's call in it does not.)
            for i in range(n):
                below |= x[i] < -88
            if below:
                for i in range(n):
                    if x[i] < -88:
                        y[i] = <float>(1 / (1 + exp(-<double>x[i])))
    elif cnp.PyArray_TYPE(out) == cnp.NPY_DOUBLE:
        with nogil:
            logistic_in_place(n, <double*>cnp.PyArray_DATA(out))
    else:
        raise TypeError(f"logistic_values: expected a float32 or float64 array, got {v.dtype}")
    return out


cdef void arithmetic_forward(int op, index_t n, const floating* a, const floating* b,
                             floating* out) noexcept nogil:
    cdef index_t i
    if op == OP_ADD:
        for i in range(n):
            out[i] = a[i] + b[i]
    elif op == OP_SUB:
        for i in range(n):
            out[i] = a[i] - b[i]
    else:
        for i in range(n):
            out[i] = a[i] * b[i]


cdef void cast_backward(Node* node, Node* nodes) noexcept nogil:
    # The only node whose input has another dtype than itself.
    cdef Node* src = &nodes[node.inputs[0]]
    cdef index_t i
    if node.inputs[0] < 0:
        return
    if node.is_f64:
        for i in range(node.size):
            (<float*>src.grad)[i] += <float>(<double*>node.grad)[i]
    else:
        for i in range(node.size):
            (<double*>src.grad)[i] += (<float*>node.grad)[i]


cdef void unary_backward(Node* node, Node* nodes) noexcept nogil:
    if node.inputs[0] < 0:
        return
    if node.is_f64:
        unary_kernel(node.op, node.size, <double*>node.grad, <double*>node.in_values[0],
                     <double*>node.value, <double*>nodes[node.inputs[0]].grad, node.reals)
    else:
        unary_kernel(node.op, node.size, <float*>node.grad, <float*>node.in_values[0],
                     <float*>node.value, <float*>nodes[node.inputs[0]].grad, node.reals)


cdef inline floating logistic(floating v) noexcept nogil:
    return 1 / (1 + exp(-v))


cdef void unary_kernel(int op, index_t n, const floating* dy, const floating* x,
                       const floating* y, floating* dx, const double* reals) noexcept nogil:
    cdef index_t i
    cdef floating alpha, lo, hi
    if op == OP_NEG:
        for i in range(n):
            dx[i] -= dy[i]
    elif op == OP_TANH:
        for i in range(n):
            dx[i] += dy[i] * (1 - y[i] * y[i])
    elif op == OP_SIGMOID:
        for i in range(n):
            dx[i] += dy[i] * y[i] * (1 - y[i])
    elif op == OP_RELU:
        for i in range(n):
            if x[i] > 0:
                dx[i] += dy[i]
    elif op == OP_LEAKYRELU:
        alpha = <floating>reals[0]
        for i in range(n):
            dx[i] += dy[i] if x[i] > 0 else alpha * dy[i]
    elif op == OP_ELU:
        # Below 0 the derivative is α eˣ, taken from x: y + α = α (expm1(x) + 1) cancelled,
        # 0.08% off at x = -12 in float32 and 0 from x = -17.5 on (torch: 2.5e-8 there).
        alpha = <floating>reals[0]
        for i in range(n):
            dx[i] += dy[i] if x[i] > 0 else dy[i] * alpha * exp(x[i])
    elif op == OP_SOFTPLUS:
        for i in range(n):
            dx[i] += dy[i] * logistic(x[i])
    elif op == OP_EXP:
        for i in range(n):
            dx[i] += dy[i] * y[i]
    elif op == OP_LOG:
        for i in range(n):
            dx[i] += dy[i] / x[i]
    elif op == OP_SQRT:
        for i in range(n):
            dx[i] += dy[i] * 0.5 / y[i]
    elif op == OP_ABS:
        for i in range(n):
            if x[i] > 0:
                dx[i] += dy[i]
            elif x[i] < 0:
                dx[i] -= dy[i]
    elif op == OP_SQUARE:
        for i in range(n):
            dx[i] += 2 * x[i] * dy[i]
    elif op == OP_POW:
        alpha = <floating>reals[0]
        for i in range(n):
            dx[i] += dy[i] * alpha * pow(x[i], alpha - 1)
    elif op == OP_CLIP:
        # Inside the closed interval the value passes through; the bounds let it pass too.
        lo = <floating>reals[0]
        hi = <floating>reals[1]
        for i in range(n):
            if lo <= x[i] <= hi:
                dx[i] += dy[i]


cdef void binary_backward(Node* node, Node* nodes) noexcept nogil:
    if node.size == 0:
        return
    if node.is_f64:
        binary_kernel[double](node, nodes, <double*>node.grad)
    else:
        binary_kernel[float](node, nodes, <float*>node.grad)


cdef void binary_kernel(Node* node, Node* nodes, floating* dy) noexcept nogil:
    cdef index_t ndim = node.ints[0]
    cdef const index_t* shape = node.ints + 1
    cdef const index_t* stride_a = node.ints + 1 + ndim
    cdef const index_t* stride_b = node.ints + 1 + 2 * ndim
    cdef const floating* a = <floating*>node.in_values[0]
    cdef const floating* b = <floating*>node.in_values[1]
    cdef const floating* y = <floating*>node.value
    cdef const floating* mask = <floating*>node.saved[0] if node.op == OP_WHERE else NULL
    cdef floating* da = <floating*>nodes[node.inputs[0]].grad if node.inputs[0] >= 0 else NULL
    cdef floating* db = <floating*>nodes[node.inputs[1]].grad if node.inputs[1] >= 0 else NULL
    cdef index_t counter[64]
    cdef index_t d, i, n = shape[ndim - 1], sa = stride_a[ndim - 1], sb = stride_b[ndim - 1]
    cdef index_t off_y = 0, off_a = 0, off_b = 0
    for d in range(ndim):
        counter[d] = 0
    while True:
        # The innermost axis runs as a flat loop; the outer axes step like an odometer.
        binary_row(node.op, n, dy + off_y, a + off_a, sa, b + off_b, sb, y + off_y,
                   mask + off_y if mask != NULL else NULL,
                   da + off_a if da != NULL else NULL, db + off_b if db != NULL else NULL)
        off_y += n
        if not next_row(ndim, shape, counter, stride_a, &off_a, stride_b, &off_b):
            return


cdef inline void binary_row(int op, index_t n, const floating* dy, const floating* a,
                            index_t sa, const floating* b, index_t sb, const floating* y,
                            const floating* mask, floating* da, floating* db) noexcept nogil:
    cdef index_t i
    if op == OP_ADD:
        if da != NULL:
            for i in range(n):
                da[i * sa] += dy[i]
        if db != NULL:
            for i in range(n):
                db[i * sb] += dy[i]
    elif op == OP_SUB:
        if da != NULL:
            for i in range(n):
                da[i * sa] += dy[i]
        if db != NULL:
            for i in range(n):
                db[i * sb] -= dy[i]
    elif op == OP_MUL:
        if da != NULL:
            for i in range(n):
                da[i * sa] += dy[i] * b[i * sb]
        if db != NULL:
            for i in range(n):
                db[i * sb] += dy[i] * a[i * sa]
    elif op == OP_DIV:
        if da != NULL:
            for i in range(n):
                da[i * sa] += dy[i] / b[i * sb]
        if db != NULL:
            for i in range(n):
                db[i * sb] -= dy[i] * y[i] / b[i * sb]
    elif op == OP_WHERE:
        if da != NULL:
            for i in range(n):
                da[i * sa] += dy[i] * mask[i]
        if db != NULL:
            for i in range(n):
                db[i * sb] += dy[i] * (1 - mask[i])
