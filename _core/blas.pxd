# Row-major matrix products over scipy's BLAS. Each call is one GEMM/GEMV on C-contiguous
# (row-major) operands; `lda`, `ldb`, `ldc` are row strides in elements.
from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating* a, int lda, const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil

cdef int blas_int(Py_ssize_t n) except -1
