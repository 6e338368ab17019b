# BLAS is column-major; a row-major matrix is its column-major transpose. So row-major
# C = op(A) op(B) is computed as the column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands and
# the sizes m and n, keep each operand's own transpose flag.
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating* a, int lda, const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    # BLAS insists on leading dimensions >= 1 even for empty operands.
    if lda < 1:
        lda = 1
    if ldb < 1:
        ldb = 1
    if ldc < 1:
        ldc = 1
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef int blas_int(Py_ssize_t n) except -1:
    """BLAS takes 32-bit sizes; refuse rather than wrap around."""
    if n < 0 or n > 2147483647:
        raise OverflowError(f"matrix dimension {n} does not fit a BLAS integer")
    return <int>n
