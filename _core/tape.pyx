# The tape and the backward loop. Values are numpy arrays owned by Python, so a value stays
# valid after its tape is reset; gradients, attributes and saved buffers live in arenas that
# are kept from one `gradient` call to the next.
import threading
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset, memcpy
from cpython.object cimport PyObject, PyTypeObject
cimport numpy as cnp
from recur._core.registry cimport OP_LEAF, OP_ALIAS
from recur._core.blas cimport (flush_deferred, settle_deferred, forget_packed, share,
                              gemm_grouped)
from recur._core.pool cimport new_array, new_array_shaped

cdef extern from "memory.h" nogil:
    void* aligned_block(size_t nbytes)

cnp.import_array()

cdef enum:
    MAX_OPS = 128
    ALIGN = 64
    FIRST_BLOCK = 1 << 16
    # Gradient bytes from which the crew's two threads share their zeroing.
    SHARED_ZEROING_MIN_BYTES = 256 << 10

cdef backward_fn backward_table[MAX_OPS]
# Per op, a bit for each input whose gradient its backward only defers products into
# (blas.pxd: defer_product), which need no waiting for those in the background; and one
# for each input whose gradient it writes whole (first_write).
cdef unsigned deferred_inputs_table[MAX_OPS]
cdef unsigned assigned_inputs_table[MAX_OPS]

cdef void register_backward(int op, backward_fn fn, unsigned deferred_inputs=0,
                            unsigned assigned_inputs=0) noexcept:
    backward_table[op] = fn
    deferred_inputs_table[op] = deferred_inputs
    assigned_inputs_table[op] = assigned_inputs

# Per op, how its backward would leave input 0's gradient as a product (GradientFactor),
# and whether its own gradient may come to it as one.
cdef factor_fn factor_table[MAX_OPS]
cdef reads_factor_fn factor_reader_table[MAX_OPS]

cdef void register_factor(int op, factor_fn fn) noexcept:
    factor_table[op] = fn

cdef void register_factor_reader(int op, reads_factor_fn fn) noexcept:
    factor_reader_table[op] = fn


# ---------------------------------------------------------------- arena

cdef inline size_t aligned(size_t n) noexcept nogil:
    return (n + ALIGN - 1) & ~(<size_t>ALIGN - 1)

cdef void* raw_alloc(size_t nbytes) noexcept nogil:
    # Blocks are padded to ALIGN, so buffers carved one after another start on cache lines.
    return aligned_block(nbytes)

cdef void* arena_alloc(Arena* a, size_t nbytes) noexcept nogil:
    cdef void* p
    cdef void** grown
    # An empty buffer still gets an address of its own: NULL means out of memory.
    nbytes = aligned(nbytes) if nbytes else ALIGN
    a.requested += nbytes
    if a.used + nbytes <= a.capacity:
        p = a.block + a.used
        a.used += nbytes
        return p
    if a.n_overflow == a.overflow_capacity:
        grown = <void**>realloc(a.overflow, (2 * a.overflow_capacity + 8) * sizeof(void*))
        if grown == NULL:
            return NULL
        a.overflow = grown
        a.overflow_capacity = 2 * a.overflow_capacity + 8
    p = raw_alloc(nbytes)
    if p != NULL:
        a.overflow[a.n_overflow] = p
        a.n_overflow += 1
    return p

cdef void arena_reset(Arena* a) noexcept nogil:
    cdef index_t i
    for i in range(a.n_overflow):
        free(a.overflow[i])
    a.n_overflow = 0
    if a.requested > a.capacity:
        # Grow the block to this call's high-water mark so the next call fits in it.
        free(a.block)
        a.capacity = aligned(a.requested + a.requested // 4)
        a.block = <char*>raw_alloc(a.capacity)
        if a.block == NULL:
            a.capacity = 0
    a.used = 0
    a.requested = 0

cdef void arena_free(Arena* a) noexcept nogil:
    arena_reset(a)
    free(a.block)
    free(a.overflow)
    memset(a, 0, sizeof(Arena))


# ---------------------------------------------------------------- tensors

# recur.tensor registers its classes here; the tape creates Tensors and recognises Params.
cdef object Tensor_type = None
cdef object Param_type = None

cdef extern from "Python.h":
    # object.__new__ without the Python-level call: Tensors are made on every op.
    object PyBaseObject_Type_new "PyBaseObject_Type.tp_new"(PyTypeObject* cls, object args,
                                                           object kwargs)
    void Py_XDECREF(PyObject* o)
    void Py_INCREF(object o)

cdef extern from "structmember.h":
    # A __slots__ entry's descriptor, which knows where in the object its slot lies.
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    PyTypeObject PyMemberDescr_Type
    int T_OBJECT_EX

# Where a Tensor (and a Param, which adds no slots) keeps each of its slots: read and
# written there directly rather than by name. A stepwise loop makes and reads several
# Tensors per step, and each access by name went through the type's attribute lookup and
# the slot's descriptor, hundreds of instructions (callgrind, Chain(GRU(8, 4), Dense(4, 3))
# on 32 rows: 1700 a step making two Tensors, 4000 in attribute reads overall).
cdef Py_ssize_t value_slot = 0, tape_slot = 0, epoch_slot = 0, node_slot = 0

cdef Py_ssize_t slot_offset(object tensor_type, object param_type, str name) except 0:
    descr = tensor_type.__dict__.get(name)
    if (type(descr) is not <object>&PyMemberDescr_Type
            or (<PyMemberDescrObject*>descr).d_member.type != T_OBJECT_EX
            or getattr(param_type, name, None) is not descr):
        raise TypeError(f"{tensor_type.__name__} must keep {name} in a __slots__ entry that "
                        f"{param_type.__name__} inherits, got {descr!r}")
    return (<PyMemberDescrObject*>descr).d_member.offset

def set_tensor_types(tensor_type, param_type):
    global Tensor_type, Param_type, value_slot, tape_slot, epoch_slot, node_slot
    value_slot = slot_offset(tensor_type, param_type, "_value")
    tape_slot = slot_offset(tensor_type, param_type, "_tape")
    epoch_slot = slot_offset(tensor_type, param_type, "_epoch")
    node_slot = slot_offset(tensor_type, param_type, "_node")
    Tensor_type, Param_type = tensor_type, param_type

cdef inline PyObject** slot(object x, Py_ssize_t offset) noexcept:
    return <PyObject**>(<char*><PyObject*>x + offset)

cdef inline void set_slot(object x, Py_ssize_t offset, object v) noexcept:
    # A T_OBJECT_EX member's store: the new reference in, the old one (if any) released.
    cdef PyObject** p = slot(x, offset)
    cdef PyObject* old = p[0]
    Py_INCREF(v)
    p[0] = <PyObject*>v
    Py_XDECREF(old)

cdef inline bint has_slots(object x) noexcept:
    # Exactly a Tensor or a Param: a subclass may answer for `_value` in a way of its own
    # (a property), so its attributes go by name.
    return type(x) is Tensor_type or type(x) is Param_type

cdef object make_tensor(object value, object tape, long epoch, index_t node):
    # Tensor values are read-only: the tape and other Tensors may share their memory.
    cnp.PyArray_CLEARFLAGS(<cnp.ndarray?>value, cnp.NPY_ARRAY_WRITEABLE)
    t = PyBaseObject_Type_new(<PyTypeObject*>Tensor_type, (), None)
    set_slot(t, value_slot, value)
    set_slot(t, tape_slot, tape)
    set_slot(t, epoch_slot, epoch)
    set_slot(t, node_slot, node)
    return t

cdef cnp.ndarray tensor_value(object x):
    if has_slots(x) and slot(x, value_slot)[0] != NULL:
        return <cnp.ndarray?><object>slot(x, value_slot)[0]
    return <cnp.ndarray?>x._value

def tensor_of(value):
    """An unrecorded Tensor owning `value` (a fresh C-contiguous float array)."""
    return make_tensor(value, None, 0, -1)

cdef bint is_tensor(object x):
    return isinstance(x, Tensor_type)


cdef object constant(object value):
    return make_tensor(value, None, 0, -1)


cdef object record_pair(int op, object value, object a, object a_value, object b,
                        object b_value, index_t n_ints, Node** node):
    cdef Tape tape = recording_tape()
    cdef index_t id_a, id_b
    node[0] = NULL
    if tape is None:
        return constant(value)
    id_a, id_b = tape.node_of(a), tape.node_of(b)
    if id_a < 0 and id_b < 0:
        return constant(value)
    node[0] = tape.append(op, value, 2, n_ints, 0, 0)
    tape.set_input(node[0], 0, id_a, a_value)
    tape.set_input(node[0], 1, id_b, b_value)
    return tape.tensor(value, tape.n_nodes - 1)


# ---------------------------------------------------------------- zeroing gradients

# The gradients of a pass start at zero, each buffer zeroed just before the first backward
# that writes it, unless that backward sets every value itself (first_write): the buffer is
# then written once. Zeroing every reached buffer before the pass cost RNN 32,128,32,100
# sequence training 1.7 MB of stores a step, nearly all of it the sequence's output
# gradient, which the Dense head's backward then added to: memset took 8-9% of perf's
# samples where the machine placed the two vCPUs far apart, about 0.3 M cycles a step where
# it placed them close (EPYC). A large buffer's zeroing is still shared by the crew.
ctypedef struct Zeroing:
    char* start
    size_t nbytes

cdef inline size_t gradient_bytes(const Node* node) noexcept nogil:
    return node.size * (sizeof(double) if node.is_f64 else sizeof(float))

cdef void zero_part(void* arg, int part, int parts) noexcept nogil:
    cdef Zeroing* job = <Zeroing*>arg
    cdef size_t first = job.nbytes * part // parts, end = job.nbytes * (part + 1) // parts
    memset(job.start + first, 0, end - first)

cdef void zero_gradient(Node* node) noexcept nogil:
    cdef Zeroing job
    job.start, job.nbytes = <char*>node.grad, gradient_bytes(node)
    share(zero_part, &job, job.nbytes >= SHARED_ZEROING_MIN_BYTES)
    node.grad_unset = False

cdef inline index_t gradient_owner(const Node* nodes, index_t i) noexcept nogil:
    # The node whose buffer holds node i's gradient: an alias's lies in its input's.
    while nodes[i].op == OP_ALIAS:
        i = nodes[i].inputs[0]
    return i

cdef inline index_t offset_in_owner(const Node* nodes, index_t i) noexcept nogil:
    cdef index_t offset = 0
    while nodes[i].op == OP_ALIAS:
        offset += nodes[i].ints[0]
        i = nodes[i].inputs[0]
    return offset

cdef bint writes_whole(const Node* node, Node* nodes, index_t owner) noexcept nogil:
    # Whether the node's backward writes every value of owner's gradient buffer itself:
    # every input of the node whose gradient lies there is one it assigns (first_write),
    # and they are owner itself or aliases that tile the buffer, as an LSTM step's h and c
    # tile the previous step's output. Aliases then take owner's first write, one each.
    cdef unsigned assigned = assigned_inputs_table[node.op]
    cdef index_t j, k, inp, other, covered = 0, start, other_start
    cdef bint itself = False, repeated
    for j in range(node.n_inputs):
        inp = node.inputs[j]
        if inp < 0 or gradient_owner(nodes, inp) != owner:
            continue
        if not (assigned >> j) & 1:
            return False
        if inp == owner:
            itself = True
            continue
        repeated = False
        start = offset_in_owner(nodes, inp)
        for k in range(j):
            other = node.inputs[k]
            if other == inp:
                repeated = True
            elif other >= 0 and other != owner and gradient_owner(nodes, other) == owner:
                other_start = offset_in_owner(nodes, other)
                if (start < other_start + nodes[other].size
                        and other_start < start + nodes[inp].size):
                    return False                # overlapping blocks
        if not repeated:
            covered += nodes[inp].size
    if itself:
        return covered == 0
    if covered != nodes[owner].size:
        return False
    for j in range(node.n_inputs):
        inp = node.inputs[j]
        if inp >= 0 and inp != owner and gradient_owner(nodes, inp) == owner:
            nodes[inp].grad_unset = True
    nodes[owner].grad_unset = False
    return True

cdef void ready_input_gradients(Node* node, Node* nodes) noexcept nogil:
    # Zeroes each input's gradient buffer that the node's backward is about to write into
    # first, unless the backward writes all of it (writes_whole) or leaves it as a product
    # (leaves_factor); writes out one left as a product before this backward adds to it.
    cdef index_t j, inp, owner
    for j in range(node.n_inputs):
        inp = node.inputs[j]
        if inp < 0:
            continue
        owner = gradient_owner(nodes, inp)
        if nodes[owner].factor_source != NULL:
            write_factor(&nodes[owner])
        if nodes[owner].grad_unset:
            if j == 0 and leaves_factor(node, nodes, inp, owner):
                continue
            if not writes_whole(node, nodes, owner):
                zero_gradient(&nodes[owner])


cdef bint leaves_factor(Node* node, Node* nodes, index_t inp, index_t owner) noexcept nogil:
    # Whether the node's input 0, inp, gets its gradient as the node's product, which
    # owner's backward reads: nothing has been written into owner's gradient, inp's block
    # starts it, and no other input of the node shares it (a product and a write into one
    # gradient would need it written out first).
    cdef GradientFactor factor
    cdef index_t j
    if (factor_table[node.op] == NULL or factor_reader_table[nodes[owner].op] == NULL
            or offset_in_owner(nodes, inp) != 0):
        return False
    for j in range(1, node.n_inputs):
        if node.inputs[j] >= 0 and gradient_owner(nodes, node.inputs[j]) == owner:
            return False
    if not (factor_table[node.op](node, &factor)
            and factor.rows * factor.cols == nodes[inp].size
            and factor_reader_table[nodes[owner].op](&nodes[owner], &factor)):
        return False
    nodes[owner].factor_source = node
    nodes[owner].grad_unset = False
    nodes[inp].grad_unset = False
    return True


cdef bint gradient_factor(const Node* node, GradientFactor* factor) noexcept nogil:
    if node.factor_source == NULL:
        return False
    return factor_table[node.factor_source.op](node.factor_source, factor)


cdef bint left_as_factor(const Node* node, Node* nodes) noexcept nogil:
    return (node.inputs[0] >= 0
            and nodes[gradient_owner(nodes, node.inputs[0])].factor_source == node)


cdef void write_factor(Node* owner) noexcept nogil:
    # The gradient that a product stands for, written into owner's buffer.
    cdef GradientFactor f
    cdef size_t itemsize = sizeof(double) if owner.is_f64 else sizeof(float)
    cdef index_t block
    gradient_factor(owner, &f)
    owner.factor_source = NULL
    block = f.rows * f.cols
    memset(<char*>owner.grad + block * itemsize, 0, (owner.size - block) * itemsize)
    if owner.is_f64:
        gemm_grouped(f.group, False, f.rows, f.cols, f.rank, <const double*>f.left, f.rank,
                     <const double*>f.right, f.cols, 0, <double*>owner.grad, f.cols)
    else:
        gemm_grouped(f.group, False, f.rows, f.cols, f.rank, <const float*>f.left, f.rank,
                     <const float*>f.right, f.cols, 0, <float*>owner.grad, f.cols)


# ---------------------------------------------------------------- the tape

cdef long recording_count = 0     # tapes recording in any thread (guarded by the GIL)
cdef long next_epoch = 1
thread_state = threading.local()

cdef extern from *:
    """
    /* This thread's tape (thread_tape), which thread_state keeps alive while the thread
       lives: recording_tape reads it on every op, where the threading.local's attribute
       lookup cost some 300 instructions. */
    static __thread PyObject* tape_of_this_thread = NULL;
    """
    PyObject* tape_of_this_thread

cdef inline size_t param_hash(void* p, index_t mask) noexcept nogil:
    return (<size_t>p >> 4) & <size_t>mask


cdef class Tape:

    def __cinit__(self):
        self.capacity = 256
        self.nodes = <Node*>malloc(self.capacity * sizeof(Node))
        if self.nodes == NULL:
            raise MemoryError()
        self.n_nodes = 0
        memset(&self.meta, 0, sizeof(Arena))
        memset(&self.work, 0, sizeof(Arena))
        self.keep = []
        self.checks = []
        self.watched = {}
        self.watched_params = []
        self.param_grads = {}
        self.handed_out = set()
        self.recording = False
        self.param_keys = NULL
        self.param_nodes = NULL
        self.param_mask = -1

    def __dealloc__(self):
        free(self.nodes)
        free(self.param_keys)
        free(self.param_nodes)
        arena_free(&self.meta)
        arena_free(&self.work)

    cdef index_t node_of(self, object x) except -2:
        cdef size_t i
        if (type(x) is Tensor_type and slot(x, node_slot)[0] != NULL
                and slot(x, epoch_slot)[0] != NULL):
            if (slot(x, tape_slot)[0] == <PyObject*>self
                    and <long><object>slot(x, epoch_slot)[0] == self.epoch):
                return <index_t><object>slot(x, node_slot)[0]
            return -1
        if type(x) is Param_type:
            if self.param_mask < 0:
                return -1
            i = param_hash(<void*>x, self.param_mask)
            while self.param_keys[i] != NULL:
                if self.param_keys[i] == <void*>x:
                    return self.param_nodes[i]
                i = (i + 1) & <size_t>self.param_mask
            return -1
        if isinstance(x, Param_type):
            return self.watched.get(id(x), -1)
        if isinstance(x, Tensor_type):
            if x._tape is self and x._epoch == self.epoch:
                return x._node
        return -1

    cdef Node* append(self, int op, object value, index_t n_inputs, index_t n_ints,
                      index_t n_reals, index_t n_saved) except NULL:
        cdef cnp.ndarray arr = <cnp.ndarray?>value
        cdef Node* grown
        cdef Node* node
        cdef char* block
        if not cnp.PyArray_ISCARRAY_RO(arr):
            raise ValueError("tape values must be C-contiguous, aligned and in this machine's "
                             "byte order")
        if self.n_nodes == self.capacity:
            grown = <Node*>realloc(self.nodes, 2 * self.capacity * sizeof(Node))
            if grown == NULL:
                raise MemoryError()
            self.nodes = grown
            self.capacity *= 2
        node = &self.nodes[self.n_nodes]
        memset(node, 0, sizeof(Node))
        node.op = op
        node.is_f64 = cnp.PyArray_TYPE(arr) == cnp.NPY_DOUBLE
        node.value = cnp.PyArray_DATA(arr)
        node.size = cnp.PyArray_SIZE(arr)
        node.n_inputs = n_inputs
        node.n_ints = n_ints
        # One block holds all of the node's attributes; every field is 8 bytes wide.
        block = <char*>self.meta_alloc(8 * (2 * n_inputs + n_ints + n_reals + n_saved) + 8)
        node.inputs = <index_t*>block
        node.in_values = <void**>(block + 8 * n_inputs)
        node.ints = <index_t*>(block + 16 * n_inputs)
        node.reals = <double*>(block + 8 * (2 * n_inputs + n_ints))
        node.saved = <void**>(block + 8 * (2 * n_inputs + n_ints + n_reals))
        memset(node.inputs, 0xff, n_inputs * sizeof(index_t))   # -1: constant
        self.keep.append(value)
        self.n_nodes += 1
        return node

    cdef void* meta_alloc(self, size_t nbytes) except NULL:
        cdef void* p = arena_alloc(&self.meta, nbytes)
        if p == NULL:
            raise MemoryError()
        return p

    cdef void set_input(self, Node* node, index_t i, index_t node_id, object array) except *:
        cdef cnp.ndarray arr = <cnp.ndarray?>array
        if not cnp.PyArray_ISCARRAY_RO(arr):
            raise ValueError("tape inputs must be C-contiguous, aligned and in this machine's "
                             "byte order")
        node.inputs[i] = node_id
        node.in_values[i] = cnp.PyArray_DATA(arr)
        if node_id < 0:
            self.keep.append(array)

    cdef void* scratch(self, size_t nbytes) except NULL:
        cdef void* p = arena_alloc(&self.work, nbytes)
        if p == NULL:
            raise MemoryError()
        return p

    cdef void hold(self, object obj) except *:
        self.keep.append(obj)

    cdef void check_before_backward(self, object check) except *:
        self.checks.append(check)

    cdef object tensor(self, object value, index_t node_id):
        return make_tensor(value, self, self.epoch, node_id)

    # -------------------------------------------------------- a gradient call

    def start(self, params):
        """Begins recording with `params` as the watched leaves."""
        global recording_count, next_epoch
        cdef Node* node
        if self.recording:
            raise RuntimeError(
                "recur.gradient called inside another gradient call on the same thread; "
                "nested differentiation is not supported")
        self.epoch = next_epoch
        next_epoch += 1
        self.recording = True
        self.backward_done = False
        recording_count += 1
        try:
            for p in params:
                if id(p) in self.watched:
                    continue
                node = self.append(OP_LEAF, p.value, 0, 0, 0, 0)
                self.watched[id(p)] = self.n_nodes - 1
                self.watched_params.append(p)
            self.index_params()
        except BaseException:
            self.finish()      # not left recording: the next call would find it nested
            raise

    cdef int index_params(self) except -1:
        # watched as node_of's table, at most half full.
        cdef index_t size = 16
        cdef size_t at
        cdef void** keys
        cdef index_t* nodes
        while size < 2 * len(self.watched_params):
            size *= 2
        if self.param_keys == NULL or self.param_mask + 1 < size:
            keys = <void**>malloc(size * sizeof(void*))
            nodes = <index_t*>malloc(size * sizeof(index_t))
            if keys == NULL or nodes == NULL:
                free(keys)
                free(nodes)
                raise MemoryError()
            free(self.param_keys)
            free(self.param_nodes)
            self.param_keys, self.param_nodes = keys, nodes
        self.param_mask = size - 1
        memset(self.param_keys, 0, size * sizeof(void*))
        for p in self.watched_params:
            at = param_hash(<void*>p, self.param_mask)
            while self.param_keys[at] != NULL:
                at = (at + 1) & <size_t>self.param_mask
            self.param_keys[at] = <void*>p
            self.param_nodes[at] = self.watched[id(p)]
        return 0

    def finish(self):
        """Ends recording and resets the tape; its buffers are kept for the next call."""
        global recording_count
        if self.recording:
            recording_count -= 1
        self.recording = False
        self.backward_done = False
        self.n_nodes = 0
        self.keep = []
        self.checks = []
        self.watched = {}
        self.watched_params = []
        self.param_mask = -1
        self.param_grads = {}
        self.handed_out = set()
        arena_reset(&self.meta)
        arena_reset(&self.work)

    def node_id(self, x):
        return self.node_of(x)

    def backward(self, index_t root):
        """Propagates d(root)/d(node) to every node that root depends on."""
        cdef index_t i, j, inp
        cdef Node* node
        cdef size_t itemsize
        cdef cnp.ndarray param_grad
        cdef cnp.npy_intp size
        if root < 0 or root >= self.n_nodes:
            raise IndexError(f"node {root} is not on the tape")
        if self.backward_done:
            raise RuntimeError("this recording's backward pass has already run; record "
                               "again (a new gradient call) for another")
        for check in self.checks:
            check()
        self.backward_done = True
        self.param_grads = {}
        self.handed_out = set()
        for i in range(self.n_nodes):
            self.nodes[i].reached = False
            self.nodes[i].grad = NULL
            self.nodes[i].factor_source = NULL
        self.nodes[root].reached = True
        for i in range(root, -1, -1):
            node = &self.nodes[i]
            if node.reached:
                if node.op != OP_LEAF and node.op != OP_ALIAS and backward_table[node.op] == NULL:
                    raise NotImplementedError(f"op {node.op} has no backward")
                for j in range(node.n_inputs):
                    inp = node.inputs[j]
                    if inp >= 0:
                        self.nodes[inp].reached = True
        # Forward order, so an alias finds its input's gradient buffer already made.
        for i in range(root + 1):
            node = &self.nodes[i]
            if not node.reached:
                continue
            itemsize = sizeof(double) if node.is_f64 else sizeof(float)
            if node.op == OP_ALIAS:
                node.grad = <char*>self.nodes[node.inputs[0]].grad + node.ints[0] * itemsize
            elif node.op == OP_LEAF:
                # A parameter's gradient is written straight into the array grad_of hands
                # out, rather than copied there from scratch memory after the pass (bench/
                # LSTM 256,1024: 21 MB of gradients, every training step).
                size = node.size
                param_grad = new_array(1, &size, cnp.NPY_DOUBLE if node.is_f64 else cnp.NPY_FLOAT)
                self.param_grads[i] = param_grad
                node.grad = cnp.PyArray_DATA(param_grad)
            else:
                node.grad = self.scratch(node.size * itemsize)
            node.grad_unset = node.op != OP_ALIAS
        with nogil:
            zero_gradient(&self.nodes[gradient_owner(self.nodes, root)])
            node = &self.nodes[root]
            if node.is_f64:
                (<double*>node.grad)[0] += 1.0
            else:
                (<float*>node.grad)[0] += 1.0
            for i in range(root, -1, -1):
                node = &self.nodes[i]
                if node.reached and node.op != OP_LEAF and node.op != OP_ALIAS:
                    # Products deferred into this node's gradient (blas.pxd) complete it,
                    # and those in the background must be done with the gradients it
                    # writes into.
                    flush_deferred(node.grad, gradient_bytes(node))
                    for j in range(node.n_inputs):
                        inp = node.inputs[j]
                        if inp >= 0 and not (deferred_inputs_table[node.op] >> j) & 1:
                            settle_deferred(self.nodes[inp].grad,
                                            gradient_bytes(&self.nodes[inp]))
                    ready_input_gradients(node, self.nodes)
                    backward_table[node.op](node, self.nodes)
                    # What the backward was to write whole and did not write is zero.
                    for j in range(node.n_inputs):
                        inp = node.inputs[j]
                        if inp >= 0 and self.nodes[inp].grad_unset:
                            zero_gradient(&self.nodes[inp])
            flush_deferred(NULL, 0)
            forget_packed()

    def grad_of(self, index_t node_id, shape, dtype):
        """A node's gradient in an array of its own, or None if the result does not depend on
        it."""
        cdef Node* node
        cdef cnp.ndarray out
        if node_id < 0:
            return None
        node = &self.nodes[node_id]
        if not node.reached or node.grad == NULL:
            return None
        out = self.param_grads.get(node_id)
        if out is not None and node_id not in self.handed_out and out.dtype == dtype:
            self.handed_out.add(node_id)        # a second call gets a copy of its own
            return out.reshape(shape)
        out = new_array_shaped(tuple(shape), cnp.NPY_DOUBLE if node.is_f64 else cnp.NPY_FLOAT)
        memcpy(cnp.PyArray_DATA(out), node.grad, gradient_bytes(node))
        return out

    def recorded_ops(self):
        """Op codes of the nodes on the tape, in order (for tests and profiling)."""
        return [self.nodes[i].op for i in range(self.n_nodes)]

    @property
    def n_nodes_recorded(self):
        return self.n_nodes

    @property
    def arena_bytes(self):
        """Bytes held by the arenas between calls (their high-water marks)."""
        return self.meta.capacity + self.work.capacity


cpdef Tape recording_tape():
    if recording_count == 0:
        return None
    if tape_of_this_thread != NULL and (<Tape>tape_of_this_thread).recording:
        return <Tape>tape_of_this_thread
    return None


def thread_tape():
    """This thread's tape, created on first use."""
    global tape_of_this_thread
    tape = getattr(thread_state, "tape", None)
    if tape is None:
        tape = Tape()
        thread_state.tape = tape
    tape_of_this_thread = <PyObject*>tape
    return tape


# ---------------------------------------------------------------- recording from Python

def record(int op, object value, tuple inputs, tuple arrays, ints=(), reals=(), saved=()):
    """Wraps `value` as the result of `op` on `inputs`.

    `arrays[i]` is the C-contiguous value of `inputs[i]` in the op's dtype. The node is
    recorded only if this thread is recording and some input is on its tape; otherwise the
    result is a constant Tensor.
    """
    cdef Tape tape = recording_tape()
    cdef index_t i, n = len(inputs)
    cdef index_t ids[8]
    cdef bint any_recorded = False
    cdef Node* node
    if tape is None:
        return make_tensor(value, None, 0, -1)
    if n > 8:
        raise ValueError("record takes at most 8 inputs; use record_many")
    for i in range(n):
        ids[i] = tape.node_of(inputs[i])
        if ids[i] >= 0:
            any_recorded = True
    if not any_recorded:
        return make_tensor(value, None, 0, -1)
    node = tape.append(op, value, n, len(ints), len(reals), len(saved))
    for i in range(n):
        tape.set_input(node, i, ids[i], arrays[i])
    fill_attributes(tape, node, ints, reals, saved)
    return make_tensor(value, tape, tape.epoch, tape.n_nodes - 1)


def record_many(int op, object value, list inputs, list arrays, ints=(), reals=()):
    """`record` for ops with any number of inputs (concatenation)."""
    cdef Tape tape = recording_tape()
    cdef index_t i, n = len(inputs)
    cdef Node* node
    if tape is None:
        return make_tensor(value, None, 0, -1)
    ids = [tape.node_of(x) for x in inputs]
    if max(ids, default=-1) < 0:
        return make_tensor(value, None, 0, -1)
    node = tape.append(op, value, n, len(ints), len(reals), 0)
    for i in range(n):
        tape.set_input(node, i, ids[i], arrays[i])
    fill_attributes(tape, node, ints, reals, ())
    return make_tensor(value, tape, tape.epoch, tape.n_nodes - 1)


cdef void fill_attributes(Tape tape, Node* node, ints, reals, saved) except *:
    cdef index_t i
    for i in range(len(ints)):
        node.ints[i] = ints[i]
    for i in range(len(reals)):
        node.reals[i] = reals[i]
    for i in range(len(saved)):
        node.saved[i] = cnp.PyArray_DATA(<cnp.ndarray?>saved[i])
        tape.hold(saved[i])


cpdef object alias(object parent, object value, index_t offset):
    """`value`, a C-contiguous block of `parent`'s value starting `offset` elements in, as a
    Tensor whose gradient is the same block of the parent's gradient (no backward work)."""
    cdef Tape tape = recording_tape()
    cdef index_t parent_id
    cdef Node* node
    if tape is None:
        return make_tensor(value, None, 0, -1)
    parent_id = tape.node_of(parent)
    if parent_id < 0:
        return make_tensor(value, None, 0, -1)
    if offset < 0 or offset + cnp.PyArray_SIZE(<cnp.ndarray?>value) > tape.nodes[parent_id].size:
        raise ValueError(f"alias block at offset {offset} does not lie inside its input")
    node = tape.append(OP_ALIAS, value, 1, 1, 0, 0)
    node.inputs[0] = parent_id
    node.in_values[0] = tape.nodes[parent_id].value
    node.ints[0] = offset
    return make_tensor(value, tape, tape.epoch, tape.n_nodes - 1)


def is_recorded(object x):
    """Whether `x` is a node of this thread's recording tape."""
    cdef Tape tape = recording_tape()
    return tape is not None and tape.node_of(x) >= 0
