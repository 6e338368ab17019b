# Walking an n-d index space whose last axis the caller runs as a flat loop: the outer axes
# step like an odometer, carrying two operands' element offsets along their own strides.
from recur._core.tape cimport index_t

cdef inline bint next_row(index_t ndim, const index_t* shape, index_t* counter,
                          const index_t* stride_a, index_t* off_a,
                          const index_t* stride_b, index_t* off_b) noexcept nogil:
    """Advances to the next row of the outer axes; False once every row was visited.
    `counter` holds ndim - 1 zeros at the start."""
    cdef index_t d = ndim - 2
    while d >= 0:
        counter[d] += 1
        off_a[0] += stride_a[d]
        off_b[0] += stride_b[d]
        if counter[d] < shape[d]:
            return True
        off_a[0] -= stride_a[d] * shape[d]
        off_b[0] -= stride_b[d] * shape[d]
        counter[d] = 0
        d -= 1
    return False
