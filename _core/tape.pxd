# The tape: a linear array of nodes in creation order (which is topological), replayed
# backwards by one loop in C. Each node names its op, its inputs' node ids and values, its
# own value and gradient, and the op's small attributes and saved buffers.
cimport numpy as cnp

ctypedef Py_ssize_t index_t

ctypedef struct Node:
    int op                 # op code (registry.pxd)
    bint is_f64            # dtype of value and grad: double if set, float otherwise
    bint reached           # contributes to the differentiated result
    index_t n_inputs
    index_t* inputs        # node id of each input, -1 for a constant
    void** in_values       # data of each input's value (C-contiguous, node dtype)
    void* value            # data of this node's value (C-contiguous)
    void* grad             # gradient of the result w.r.t. value; set during backward
    bint grad_unset        # its gradient buffer holds nothing yet (first_write)
    Node* factor_source    # the node whose product stands for its gradient (GradientFactor)
    index_t size           # number of elements of value
    index_t n_ints
    index_t* ints          # op attributes: sizes, strides, axes
    double* reals          # op attributes: scalars
    void** saved           # op buffers saved for backward

# A backward function reads node.grad and adds its contribution to every input gradient
# whose node id is >= 0 (or sets it: first_write). It runs without the GIL.
ctypedef void (*backward_fn)(Node* node, Node* nodes) noexcept nogil

# `deferred_inputs`: a bit for each input whose gradient the backward only defers products
# into (blas.pxd: defer_product). `assigned_inputs`: a bit for each input whose gradient it
# writes whole, every value, asking first_write before it does.
cdef void register_backward(int op, backward_fn fn, unsigned deferred_inputs=*,
                            unsigned assigned_inputs=*) noexcept

# A gradient kept as a product rather than written: its first rows x cols values are
# left right (left rows x rank, right rank x cols, both row-major and contiguous, rank at
# most few_inner's, blas.pxd) and any after them zero. A Dense head's backward leaves its
# input's gradient so (dz W) where the node that owns that gradient reads it a step's rows
# at a time, as a sequence's backward does: the (T, B, H) gradient, 1.6 MB for RNN
# 32,128,32,100, is then never written and read back. Any other backward that writes into
# such a gradient finds it written out first (the tape's ready_input_gradients).
ctypedef struct GradientFactor:
    const void* left
    const void* right
    index_t rows, cols, rank
    index_t group          # left's rows by a sequence's steps (blas.pxd: gemm_grouped)

# Fills *factor with the product that stands for input 0's gradient of `node` (it writes
# nothing there when it can leave it so); False where it cannot.
ctypedef bint (*factor_fn)(const Node* node, GradientFactor* factor) noexcept nogil

# Whether `owner`'s backward reads its gradient from the product `factor`.
ctypedef bint (*reads_factor_fn)(const Node* owner,
                                 const GradientFactor* factor) noexcept nogil

# Registers an op whose backward may leave its input 0's gradient as a product, and an op
# whose backward may read its own gradient as one.
cdef void register_factor(int op, factor_fn fn) noexcept
cdef void register_factor_reader(int op, reads_factor_fn fn) noexcept

# The product that stands for node's gradient: False where its gradient is written.
cdef bint gradient_factor(const Node* node, GradientFactor* factor) noexcept nogil

# Whether the tape left input 0's gradient of `node` as node's product, for its backward
# not to write.
cdef bint left_as_factor(const Node* node, Node* nodes) noexcept nogil

# Zeroes a node's gradient buffer (the crew sharing a large one), for a backward that
# writes a buffer first (first_write) but only adds to it.
cdef void zero_gradient(Node* node) noexcept nogil

# Whether a backward's write into node i's gradient, an input its op registered as
# assigned, is the buffer's first: then the tape has not zeroed the buffer, and the write
# sets every value (b = x rather than b += x) instead of adding to them. A layer's output
# gradient, a sequence's 1.6 MB for RNN 32,128,32,100, is then written once rather than
# zeroed and then added to.
cdef inline bint first_write(Node* nodes, index_t i) noexcept nogil:
    if nodes[i].grad_unset:
        nodes[i].grad_unset = False
        return True
    return False

# Bump allocator: one block sized to the previous call's high-water mark, overflow blocks
# while a call outgrows it. Reset keeps the block, so a repeated call allocates nothing.
ctypedef struct Arena:
    char* block
    size_t capacity
    size_t used
    size_t requested
    void** overflow
    index_t n_overflow
    index_t overflow_capacity


cdef class Tape:
    cdef Node* nodes
    cdef index_t n_nodes
    cdef index_t capacity
    cdef Arena meta        # node attributes; lives until the tape is reset
    cdef Arena work        # gradients and saved buffers; lives until the tape is reset
    cdef list keep         # Python objects whose data nodes point into
    cdef dict watched      # id(Param) -> leaf node id
    cdef list watched_params
    # The same for node_of, as a table open-addressed by the Params' addresses (which
    # watched_params keeps from being reused while the recording lasts): slots of NULL
    # are free, and param_mask is the table's size less one, -1 while nothing is watched.
    cdef void** param_keys
    cdef index_t* param_nodes
    cdef index_t param_mask
    cdef dict param_grads  # leaf node id -> the ndarray its gradient is written into
    cdef set handed_out    # leaf node ids whose gradient array grad_of has returned
    cdef readonly long epoch
    cdef readonly bint recording
    # A recording's backward pass runs once: kernels may reuse what the forward saved for
    # it (an LSTM's gate gradients overwrite its gates).
    cdef bint backward_done
    # Callables the backward pass runs before anything else; one that raises stops it
    # with every gradient as it was (a kernel's check that what the forward relied on
    # still holds).
    cdef list checks

    # Node id of a Tensor/Param recorded on this tape, or -1 for anything else.
    cdef index_t node_of(self, object x) except -2
    # Lays the watched Params out in node_of's table (start).
    cdef int index_params(self) except -1
    # Appends a node for `value` (a C-contiguous float32/float64 ndarray, kept alive).
    # The returned pointer is valid until the next append.
    cdef Node* append(self, int op, object value, index_t n_inputs, index_t n_ints,
                      index_t n_reals, index_t n_saved) except NULL
    # Sets input i of `node`: its node id and its value's data (array kept alive).
    cdef void set_input(self, Node* node, index_t i, index_t node_id, object array) except *
    # Memory valid until the tape is reset (saved buffers of fused kernels).
    cdef void* scratch(self, size_t nbytes) except NULL
    cdef void* meta_alloc(self, size_t nbytes) except NULL
    # Keeps a Python object alive until the tape is reset.
    cdef void hold(self, object obj) except *
    # Runs `check()` when this recording's backward pass starts.
    cdef void check_before_backward(self, object check) except *
    # A Tensor for node `node_id` with value `value`.
    cdef object tensor(self, object value, index_t node_id)


# This thread's tape if it is recording, else None. Costs one integer test when no thread
# is recording.
cpdef Tape recording_tape()

# Wraps an array as a constant (unrecorded) Tensor.
cdef object constant(object value)

# `value` as the Tensor of op(a, b), given each input's C-contiguous value in the op's dtype:
# recorded when this thread records and a or b is on its tape, with *node set to the new node
# for the caller to fill its n_ints attributes (valid until the next append); else a constant,
# with *node NULL. The fused C entries' one way of recording two inputs.
cdef object record_pair(int op, object value, object a, object a_value, object b,
                        object b_value, index_t n_ints, Node** node)

# `value`, a C-contiguous block of parent's value `offset` elements in, as a Tensor whose
# gradient is that block of the parent's gradient.
cpdef object alias(object parent, object value, index_t offset)

# Whether x is a Tensor (Params included).
cdef bint is_tensor(object x)

# The array of a Tensor or Param (which keep theirs in `_value`).
cdef cnp.ndarray tensor_value(object x)

# The array of an ndarray, or of a Tensor or Param.
cdef inline cnp.ndarray value_of(object x):
    return <cnp.ndarray>x if isinstance(x, cnp.ndarray) else tensor_value(x)
