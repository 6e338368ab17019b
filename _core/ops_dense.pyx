# Matrix products and the fused Dense layer, forward and backward, over BLAS.
from recur._core.fastmath cimport tanh_in_place, logistic_in_place
from cython cimport floating
cimport numpy as cnp
import numpy as np
from recur._core.tape cimport (Node, Tape, index_t, first_write, recording_tape, constant,
                               is_tensor, value_of, tensor_value, GradientFactor,
                               left_as_factor)
from recur._core.blas cimport (gemm, gemm_grouped, dense_product, blas_int, defer_product,
                               grouped_few_rows, takes_few_inner)
from recur._core.registry cimport OP_MATMUL, OP_DENSE
from recur._core.pool cimport new_array, new_array_shaped

cnp.import_array()


# ---------------------------------------------------------------- activations

cdef void activate(int act, Py_ssize_t n, floating* y) noexcept nogil:
    cdef Py_ssize_t i
    if act == ACT_TANH:
        tanh_in_place(n, y)
    elif act == ACT_SIGMOID:
        logistic_in_place(n, y)
    elif act == ACT_RELU:
        for i in range(n):
            if y[i] < 0:
                y[i] = 0


cdef void activation_grad(int act, Py_ssize_t n, const floating* y, const floating* dy,
                          floating* dz) noexcept nogil:
    # Literals are cast: a bare 1 would make C compute float32 expressions in double.
    cdef Py_ssize_t i
    if act == ACT_TANH:
        for i in range(n):
            dz[i] = dy[i] * (<floating>1 - y[i] * y[i])
    elif act == ACT_SIGMOID:
        for i in range(n):
            dz[i] = dy[i] * y[i] * (<floating>1 - y[i])
    elif act == ACT_RELU:
        for i in range(n):
            dz[i] = dy[i] if y[i] > 0 else <floating>0
    else:
        for i in range(n):
            dz[i] = dy[i]


# ---------------------------------------------------------------- batched matmul
# c[k] = a[k] @ b[k] for k < batch, a[k] (m, inner), b[k] (inner, n). A batch stride of 0
# shares that operand across the batch (its gradient then sums over the batch).
# node.ints = [batch, m, inner, n, stride_a, stride_b]

def matmul(a_in, b_in, cnp.ndarray a, cnp.ndarray b, index_t batch, index_t m, index_t inner,
           index_t n, index_t stride_a, index_t stride_b, out_shape):
    cdef cnp.ndarray c = new_array_shaped(out_shape, cnp.PyArray_TYPE(a))
    cdef Tape tape
    cdef Node* node
    cdef index_t id_a, id_b, k
    blas_int(m)
    blas_int(n)
    blas_int(inner)
    if a.dtype == np.float64:
        with nogil:
            matmul_forward[double](batch, m, inner, n, <double*>cnp.PyArray_DATA(a), stride_a,
                                   <double*>cnp.PyArray_DATA(b), stride_b, <double*>cnp.PyArray_DATA(c))
    else:
        with nogil:
            matmul_forward[float](batch, m, inner, n, <float*>cnp.PyArray_DATA(a), stride_a,
                                  <float*>cnp.PyArray_DATA(b), stride_b, <float*>cnp.PyArray_DATA(c))
    tape = recording_tape()
    if tape is None:
        return constant(c)
    id_a = tape.node_of(a_in)
    id_b = tape.node_of(b_in)
    if id_a < 0 and id_b < 0:
        return constant(c)
    node = tape.append(OP_MATMUL, c, 2, 6, 0, 0)
    tape.set_input(node, 0, id_a, a)
    tape.set_input(node, 1, id_b, b)
    node.ints[0] = batch; node.ints[1] = m; node.ints[2] = inner; node.ints[3] = n
    node.ints[4] = stride_a; node.ints[5] = stride_b
    return tape.tensor(c, tape.n_nodes - 1)


cdef void matmul_forward(index_t batch, index_t m, index_t inner, index_t n,
                         const floating* a, index_t stride_a, const floating* b,
                         index_t stride_b, floating* c) noexcept nogil:
    cdef index_t k
    for k in range(batch):
        gemm(False, False, m, n, inner, 1, a + k * stride_a, inner, b + k * stride_b, n,
             0, c + k * m * n, n)


cdef void matmul_backward(Node* node, Node* nodes) noexcept nogil:
    if node.is_f64:
        matmul_backward_kernel[double](node, nodes, <double*>node.grad)
    else:
        matmul_backward_kernel[float](node, nodes, <float*>node.grad)


cdef void matmul_backward_kernel(Node* node, Node* nodes, const floating* dc) noexcept nogil:
    # da[k] += dc[k] @ b[k]ᵀ,  db[k] += a[k]ᵀ @ dc[k]
    cdef index_t batch = node.ints[0], m = node.ints[1], inner = node.ints[2], n = node.ints[3]
    cdef index_t stride_a = node.ints[4], stride_b = node.ints[5], k
    cdef const floating* a = <floating*>node.in_values[0]
    cdef const floating* b = <floating*>node.in_values[1]
    for k in range(batch):
        if node.inputs[0] >= 0:
            gemm(False, True, m, inner, n, 1, dc + k * m * n, n, b + k * stride_b, n,
                 1, <floating*>nodes[node.inputs[0]].grad + k * stride_a, inner)
        if node.inputs[1] >= 0:
            gemm(True, False, inner, n, m, 1, a + k * stride_a, inner, dc + k * m * n, n,
                 1, <floating*>nodes[node.inputs[1]].grad + k * stride_b, n)


# ---------------------------------------------------------------- Dense
# y = act(x @ Wᵀ + b) with x (rows, in) — every leading axis folded into rows — W (out, in),
# b (out,) or absent. node.ints = [rows, in, out, act, has_bias];
# inputs = [x, W, b]; saved = [scratch for dz (rows, out)].

def call(layer, x, prepare, activations):
    """`layer(x)` for a Dense layer (recur/layers.py), whose `W`, `b` and `σ` it reads.
    `prepare(layer, x, dtype, n_in)` gives (x, its value) for an input that is not yet a
    Tensor or a C-contiguous array of W's dtype with n_in features, or raises; the fused
    activations map to their codes in `activations`, any other σ applies after the node.
    A stepwise loop calls this once per step, so the common case stays in C."""
    W_in, b_in, σ = layer.W, layer.b, layer.σ
    cdef cnp.ndarray W = value_of(W_in)
    cdef cnp.ndarray value = None
    cdef index_t n_in
    if W.ndim != 2:
        raise ValueError(f"{type(layer).__name__}: W must be a matrix, got shape "
                         f"{(<object>W).shape}")
    n_in = W.shape[1]
    if type(x) is cnp.ndarray:
        value = <cnp.ndarray>x
    elif is_tensor(x):
        value = tensor_value(x)
    if (value is None or cnp.PyArray_TYPE(value) != cnp.PyArray_TYPE(W) or value.ndim == 0
            or value.shape[value.ndim - 1] != n_in or not cnp.PyArray_ISCARRAY_RO(value)):
        x, value = prepare(layer, x, W.dtype, n_in)
    act = activations.get(σ)
    y = dense(x, W_in, b_in, value, W, None if b_in is None else value_of(b_in),
              0 if act is None else act)
    return y if act is not None else σ(y)


cdef object dense(x_in, W_in, b_in, cnp.ndarray x, cnp.ndarray W, object b, int act):
    # y = act(x Wᵀ + b), shaped as x with W's rows for its last axis.
    cdef index_t rows = 1               # every axis but the last (x may have no inputs)
    cdef index_t n_in = W.shape[1], n_out = W.shape[0]
    cdef cnp.npy_intp out_dims[64]      # NPY_MAXDIMS of numpy 2, the most x can have
    cdef int axis
    for axis in range(x.ndim - 1):
        out_dims[axis] = x.shape[axis]
        rows *= x.shape[axis]
    out_dims[x.ndim - 1] = n_out
    cdef cnp.ndarray y = new_array(x.ndim, out_dims, cnp.PyArray_TYPE(W))
    cdef void* bias = NULL if b is None else cnp.PyArray_DATA(<cnp.ndarray?>b)
    cdef Tape tape
    cdef Node* node
    cdef index_t id_x, id_W, id_b = -1
    # A sequence's (T, B, n_in): its rows come a step's batch at a time.
    cdef index_t group = x.shape[x.ndim - 2] if x.ndim >= 3 else 0
    blas_int(rows)
    blas_int(n_in)
    blas_int(n_out)
    if cnp.PyArray_TYPE(W) == cnp.NPY_DOUBLE:
        with nogil:
            dense_forward[double](rows, group, n_in, n_out, act,
                                  <double*>cnp.PyArray_DATA(x), <double*>cnp.PyArray_DATA(W),
                                  <double*>bias, <double*>cnp.PyArray_DATA(y))
    else:
        with nogil:
            dense_forward[float](rows, group, n_in, n_out, act,
                                 <float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(W),
                                 <float*>bias, <float*>cnp.PyArray_DATA(y))
    tape = recording_tape()
    if tape is None:
        return constant(y)
    id_x = tape.node_of(x_in)
    id_W = tape.node_of(W_in)
    if b is not None:
        id_b = tape.node_of(b_in)
    if id_x < 0 and id_W < 0 and id_b < 0:
        return constant(y)
    node = tape.append(OP_DENSE, y, 3, 6, 0, 1)
    tape.set_input(node, 0, id_x, x)
    tape.set_input(node, 1, id_W, W)
    if b is not None:
        tape.set_input(node, 2, id_b, b)
    node.ints[0] = rows; node.ints[1] = n_in; node.ints[2] = n_out
    node.ints[3] = act; node.ints[4] = b is not None; node.ints[5] = group
    node.saved[0] = NULL
    if act != ACT_IDENTITY:
        node.saved[0] = tape.scratch(rows * n_out * cnp.PyArray_ITEMSIZE(y))
    return tape.tensor(y, tape.n_nodes - 1)


cdef void dense_forward(index_t rows, index_t group, index_t n_in, index_t n_out, int act,
                        const floating* x, const floating* W, const floating* b,
                        floating* y) noexcept nogil:
    dense_product(group, rows, n_out, n_in, x, W, b, y)
    activate(act, rows * n_out, y)


cdef void dense_backward(Node* node, Node* nodes) noexcept nogil:
    if node.is_f64:
        dense_backward_kernel[double](node, nodes, <double*>node.grad)
    else:
        dense_backward_kernel[float](node, nodes, <float*>node.grad)


cdef void dense_backward_kernel(Node* node, Node* nodes, const floating* dy) noexcept nogil:
    cdef index_t rows = node.ints[0], n_in = node.ints[1], n_out = node.ints[2]
    cdef int act = node.ints[3]
    cdef const floating* dz = dy
    cdef floating* db
    cdef index_t r, j
    if act != ACT_IDENTITY:
        activation_grad(act, rows * n_out, <floating*>node.value, dy, <floating*>node.saved[0])
        dz = <floating*>node.saved[0]
    if node.inputs[1] >= 0:
        # dW += dzᵀ x. A step's few rows wait to join the next steps' (defer_product,
        # blas.pxd): on its own, a head's 3 x 128 gradient over 32 rows went to the BLAS,
        # which spent more time copying the operands than multiplying (RNN 32,128,32,100
        # stepwise training, one thread: 17% of the backward pass in the BLAS's copies and
        # kernel; in-process alternation, two threads: 3-10% faster deferred).
        if not grouped_few_rows(floating is double, n_out, n_in, rows, dz, n_out,
                                node.in_values[0], n_in, nodes[node.inputs[1]].grad, n_in,
                                node.ints[5]):
            defer_product(floating is double, n_out, n_in, rows, dz, n_out,
                          node.in_values[0], n_in, nodes[node.inputs[1]].grad, n_in)
    if node.ints[4] and node.inputs[2] >= 0:   # db += Σ_rows dz
        db = <floating*>nodes[node.inputs[2]].grad
        for r in range(rows):
            for j in range(n_out):
                db[j] += dz[r * n_out + j]
    # dx = dz W, or dx += dz W after another consumer's; or left as that product for the
    # node that owns x's gradient to read (tape.pxd: GradientFactor).
    if node.inputs[0] >= 0 and not left_as_factor(node, nodes):
        gemm_grouped(node.ints[5], False, rows, n_in, n_out, dz, n_out,
                     <floating*>node.in_values[1], n_in,
                     0 if first_write(nodes, node.inputs[0]) else 1,
                     <floating*>nodes[node.inputs[0]].grad, n_in)


cdef bint input_gradient_factor(const Node* node, GradientFactor* factor) noexcept nogil:
    # dx = dz W, left as that product for a head of few outputs: dz is the node's
    # gradient, or with an activation the buffer its backward writes dz into.
    cdef index_t n_in = node.ints[1], n_out = node.ints[2]
    if not takes_few_inner(n_in, n_out, sizeof(double) if node.is_f64 else sizeof(float)):
        return False
    factor.left = node.grad if node.ints[3] == ACT_IDENTITY else node.saved[0]
    factor.right = node.in_values[1]
    factor.rows, factor.cols, factor.rank = node.ints[0], n_in, n_out
    factor.group = node.ints[5]
    return True
