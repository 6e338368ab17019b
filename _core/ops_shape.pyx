# Backward of reductions, layout changes and indexing. Forward values come from numpy
# (recur/ops.py); the backward of most of them is one strided accumulation
#     dst[dst_offset + Σ i_d·dst_stride_d] += scale · src[Σ i_d·src_stride_d] (· weight[i])
# over an index space `shape`:
#   sum/mean   index space = input shape, dst = input grad, src = output grad with stride 0
#              on the reduced axes;
#   broadcast  index space = output shape, dst = input grad with stride 0 on broadcast axes;
#   max        as sum, weighted by the saved share of each input element in its maximum;
#   strided    transpose and basic slicing: index space = output shape, dst strides are the
#              view's strides into the input.
# node.ints = [ndim, dst_offset, shape[ndim], dst_strides[ndim], src_strides[ndim]],
# node.reals = [scale], node.saved = [weights] for max.
from libc.math cimport exp
from libc.stdint cimport int64_t
from cython cimport floating
from recur._core.tape cimport Node, index_t
from recur._core.registry cimport *
from recur._core.strided cimport next_row


cdef void strided_backward(Node* node, Node* nodes) noexcept nogil:
    cdef Node* src = &nodes[node.inputs[0]]
    if node.inputs[0] < 0 or node.size == 0 or src.size == 0:
        return
    if node.is_f64:
        strided_kernel[double](node, <double*>src.grad, <double*>node.grad)
    else:
        strided_kernel[float](node, <float*>src.grad, <float*>node.grad)


cdef void strided_kernel(Node* node, floating* dst, const floating* src) noexcept nogil:
    cdef index_t ndim = node.ints[0]
    cdef const index_t* shape = node.ints + 2
    cdef const index_t* dst_stride = node.ints + 2 + ndim
    cdef const index_t* src_stride = node.ints + 2 + 2 * ndim
    cdef floating scale = <floating>node.reals[0]
    cdef const floating* weight = <floating*>node.saved[0] if node.op == OP_MAX else NULL
    cdef index_t counter[64]
    cdef index_t d, i, n = shape[ndim - 1]
    cdef index_t ds = dst_stride[ndim - 1], ss = src_stride[ndim - 1]
    cdef index_t off_dst = node.ints[1], off_src = 0, off_w = 0
    for d in range(ndim):
        counter[d] = 0
    while True:
        if weight != NULL:
            for i in range(n):
                dst[off_dst + i * ds] += scale * src[off_src + i * ss] * weight[off_w + i]
        else:
            for i in range(n):
                dst[off_dst + i * ds] += scale * src[off_src + i * ss]
        off_w += n
        if not next_row(ndim, shape, counter, dst_stride, &off_dst, src_stride, &off_src):
            return


# softmax and logsoftmax along one axis: the value viewed as (outer, n, inner).
# node.ints = [outer, n, inner].
cdef void softmax_backward(Node* node, Node* nodes) noexcept nogil:
    if node.inputs[0] < 0:
        return
    if node.is_f64:
        softmax_kernel(node.op == OP_LOGSOFTMAX, node.ints[0], node.ints[1], node.ints[2],
                       <double*>node.value, <double*>node.grad,
                       <double*>nodes[node.inputs[0]].grad)
    else:
        softmax_kernel(node.op == OP_LOGSOFTMAX, node.ints[0], node.ints[1], node.ints[2],
                       <float*>node.value, <float*>node.grad,
                       <float*>nodes[node.inputs[0]].grad)


cdef void softmax_kernel(bint logarithmic, index_t outer, index_t n, index_t inner,
                         const floating* y, const floating* dy, floating* dx) noexcept nogil:
    # softmax:    dx = y ⊙ (dy − Σ dy⊙y)
    # logsoftmax: dx = dy − exp(y) Σ dy
    cdef index_t o, k, j, base
    cdef double total
    for o in range(outer):
        for j in range(inner):
            base = o * n * inner + j
            total = 0
            for k in range(n):
                if logarithmic:
                    total += dy[base + k * inner]
                else:
                    total += dy[base + k * inner] * y[base + k * inner]
            for k in range(n):
                if logarithmic:
                    dx[base + k * inner] += dy[base + k * inner] - exp(y[base + k * inner]) * total
                else:
                    dx[base + k * inner] += y[base + k * inner] * (dy[base + k * inner] - total)


# Gather of rows: value[j, :] = input[index[j], :] with rows `inner` wide (advanced indexing
# with inner = 1 on the flattened input, embedding lookups with inner = dim).
# node.ints = [inner, n_rows], node.saved = [index (int64)].
cdef void gather_backward(Node* node, Node* nodes) noexcept nogil:
    if node.inputs[0] < 0:
        return
    if node.is_f64:
        gather_kernel(node.ints[0], node.ints[1], <int64_t*>node.saved[0],
                      <double*>node.grad, <double*>nodes[node.inputs[0]].grad)
    else:
        gather_kernel(node.ints[0], node.ints[1], <int64_t*>node.saved[0],
                      <float*>node.grad, <float*>nodes[node.inputs[0]].grad)


cdef void gather_kernel(index_t inner, index_t n_rows, const int64_t* index,
                        const floating* dy, floating* dx) noexcept nogil:
    cdef index_t j, k
    cdef floating* row
    for j in range(n_rows):
        row = dx + index[j] * inner
        for k in range(inner):
            row[k] += dy[j * inner + k]


# Concatenation along an axis: every input viewed as (outer, width_i) with width_i its
# extent along the axis times the inner size; the output rows are the inputs' rows side by
# side. node.ints = [outer, width_0, width_1, ...].
cdef void concat_backward(Node* node, Node* nodes) noexcept nogil:
    if node.is_f64:
        concat_kernel[double](node, nodes, <double*>node.grad)
    else:
        concat_kernel[float](node, nodes, <float*>node.grad)


cdef void concat_kernel(Node* node, Node* nodes, const floating* dy) noexcept nogil:
    cdef index_t outer = node.ints[0], total = 0, start = 0, i, o, k, width
    cdef floating* dx
    for i in range(node.n_inputs):
        total += node.ints[1 + i]
    for i in range(node.n_inputs):
        width = node.ints[1 + i]
        if node.inputs[i] >= 0:
            dx = <floating*>nodes[node.inputs[i]].grad
            for o in range(outer):
                for k in range(width):
                    dx[o * width + k] += dy[o * total + start + k]
        start += width
