# cython: language_level=3, boundscheck=False, wraparound=False
"""The memory of the arrays recur's kernels return: a block is kept when its array dies and
handed to the next array of the same size.

A training or inference loop makes the same arrays step after step. Given back to malloc, a
step's blocks merge at the top of the heap, and once more than glibc's trim threshold lies
there (128 KB, unless a freed mmapped block has raised it), glibc hands those pages back to
the kernel: the next step faults each page in again and the kernel zeroes it. A stepwise
LSTM loop at 32,128,32,100 in a new process took 8 faults a step, and 5.3 ms a pass
against 4.0 with this pool. Kept here, a block comes back without a fault, and still warm.

Only blocks from NUMPY_CACHED_BYTES to POOLED_MAX_BYTES are kept, and KEPT_MAX_BYTES of them
at most, the sizes given back least recently going first: numpy keeps smaller ones itself,
and a larger block's first free raises glibc's own thresholds above it.

Arrays own their block through a `PooledBlock` as their base. A block in an array's use is
reported to tracemalloc in numpy's domain, as numpy reports its own, so memory tracing sees
recur's arrays as it sees any other. Everything here runs under the GIL (arrays are made
and freed by Python code), which is the pool's only lock."""
cimport cython
cimport numpy as cnp
from libc.stdlib cimport free, realloc

cnp.import_array()

cdef extern from "memory.h":
    void* aligned_block(size_t nbytes) nogil

cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, size_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, size_t ptr)

cdef extern from *:
    """
    /* The GIL is the pool's lock: a build without one takes numpy's memory instead. */
    #ifdef Py_GIL_DISABLED
    #define POOL_IN_USE 0
    #else
    #define POOL_IN_USE 1
    #endif
    """
    bint POOL_IN_USE

cdef enum:
    NUMPY_TRACE_DOMAIN = 389047        # numpy's tracemalloc domain for array data
    NUMPY_CACHED_BYTES = 1024          # numpy's own cache of small data blocks lies below
    POOLED_MAX_BYTES = 1 << 20
    KEPT_MAX_BYTES = 64 << 20
    SHELVES = 64                       # distinct block sizes kept, a power of two
    BLOCK_ROUNDING = 64                # sizes rounded to cache lines: one shelf serves
                                       # arrays a few elements apart

# The kept blocks of one size, last given back on top.
ctypedef struct Shelf:
    size_t nbytes          # 0 for a shelf no size has taken yet
    void** blocks
    Py_ssize_t count
    Py_ssize_t capacity
    unsigned long long last_given    # the pool's count of blocks given back, at its last

cdef Shelf shelves[SHELVES]
cdef size_t kept_bytes = 0
cdef unsigned long long given_back = 0


cdef Shelf* shelf_of(size_t nbytes, bint claim) noexcept:
    # Open addressing on the size. A size claims a shelf when a block of it comes back:
    # the first one no size has taken along its probe, else one left empty, else the one
    # given a block least recently, whose blocks go back to malloc. A session that changes
    # its shapes keeps pooling its new ones. NULL for a size without a shelf, unclaimed.
    cdef size_t slot = (nbytes // BLOCK_ROUNDING) * <size_t>0x9E3779B97F4A7C15u
    cdef int probe
    cdef Shelf* shelf
    cdef Shelf* spare = NULL
    for probe in range(SHELVES):
        shelf = &shelves[(slot + probe) & (SHELVES - 1)]
        if shelf.nbytes == nbytes:
            return shelf
        if shelf.nbytes == 0:        # no size has gone further along this probe
            spare = shelf
            break
        if spare == NULL or (spare.count > 0 and (shelf.count == 0
                                                  or shelf.last_given < spare.last_given)):
            spare = shelf
    if not claim:
        return NULL
    clear(spare)
    spare.nbytes = nbytes
    return spare


cdef void clear(Shelf* shelf) noexcept:
    # Its blocks back to malloc.
    global kept_bytes
    while shelf.count > 0:
        shelf.count -= 1
        free(shelf.blocks[shelf.count])
        kept_bytes -= shelf.nbytes


cdef Shelf* least_recent_other_than(Shelf* keep) noexcept:
    cdef Shelf* oldest = NULL
    cdef int i
    for i in range(SHELVES):
        if &shelves[i] != keep and shelves[i].count > 0 and (
                oldest == NULL or shelves[i].last_given < oldest.last_given):
            oldest = &shelves[i]
    return oldest


cdef void* take(size_t nbytes) noexcept:
    global kept_bytes
    cdef Shelf* shelf = shelf_of(nbytes, False)
    if shelf != NULL and shelf.count > 0:
        shelf.count -= 1
        kept_bytes -= nbytes
        return shelf.blocks[shelf.count]
    return aligned_block(nbytes)


cdef void give_back(void* block, size_t nbytes) noexcept:
    global kept_bytes, given_back
    cdef Shelf* shelf = shelf_of(nbytes, True)
    cdef Shelf* oldest
    cdef void** grown
    cdef Py_ssize_t capacity
    while kept_bytes + nbytes > <size_t>KEPT_MAX_BYTES:
        oldest = least_recent_other_than(shelf)
        if oldest == NULL:
            free(block)
            return
        clear(oldest)
    if shelf.count == shelf.capacity:
        capacity = 2 * shelf.capacity if shelf.capacity else 16
        grown = <void**>realloc(shelf.blocks, capacity * sizeof(void*))
        if grown == NULL:
            free(block)
            return
        shelf.blocks, shelf.capacity = grown, capacity
    shelf.blocks[shelf.count] = block
    shelf.count += 1
    kept_bytes += nbytes
    given_back += 1
    shelf.last_given = given_back


@cython.final
@cython.freelist(256)
cdef class PooledBlock:
    """The block of memory under an array from `new_array`; gives it back when the array
    (its only holder) is gone."""
    cdef void* data
    cdef size_t nbytes

    def __dealloc__(self):
        if self.data != NULL:
            PyTraceMalloc_Untrack(NUMPY_TRACE_DOMAIN, <size_t>self.data)
            give_back(self.data, self.nbytes)


cdef cnp.ndarray new_array(int nd, const cnp.npy_intp* dims, int typenum):
    cdef size_t nbytes = cnp.PyArray_DescrFromType(typenum).itemsize
    cdef int i
    cdef PooledBlock owner
    cdef cnp.ndarray array
    for i in range(nd):
        if dims[i] < 0 or (dims[i] > 0 and nbytes > <size_t>POOLED_MAX_BYTES // <size_t>dims[i]):
            return cnp.PyArray_EMPTY(nd, <cnp.npy_intp*>dims, typenum, 0)
        nbytes *= <size_t>dims[i]
    if nbytes < NUMPY_CACHED_BYTES or not POOL_IN_USE:
        return cnp.PyArray_EMPTY(nd, <cnp.npy_intp*>dims, typenum, 0)
    nbytes = (nbytes + BLOCK_ROUNDING - 1) & ~(<size_t>BLOCK_ROUNDING - 1)
    owner = PooledBlock.__new__(PooledBlock)
    owner.data = take(nbytes)
    if owner.data == NULL:
        raise MemoryError()
    owner.nbytes = nbytes
    PyTraceMalloc_Track(NUMPY_TRACE_DOMAIN, <size_t>owner.data, nbytes)
    array = cnp.PyArray_SimpleNewFromData(nd, <cnp.npy_intp*>dims, typenum, owner.data)
    cnp.set_array_base(array, owner)
    return array


cdef cnp.ndarray new_array_shaped(tuple shape, int typenum):
    cdef cnp.npy_intp dims[64]         # NPY_MAXDIMS of numpy 2
    cdef int nd = len(shape), i
    if nd > 64:
        raise ValueError(f"an array has at most 64 dimensions, got shape {shape}")
    for i in range(nd):
        dims[i] = shape[i]
    return new_array(nd, dims, typenum)


def kept():
    """(blocks, bytes) the pool holds for the next arrays (for tests)."""
    cdef Py_ssize_t blocks = 0
    cdef int i
    for i in range(SHELVES):
        blocks += shelves[i].count
    return blocks, kept_bytes
