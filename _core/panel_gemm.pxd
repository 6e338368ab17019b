# Fused-type face of panel_gemm.h: the recurrence's per-step products against weights
# packed once per sequence (see the header for the layout and why).
from cython cimport floating

cdef extern from "panel_gemm.h" nogil:
    size_t panel_size_f(ptrdiff_t K, ptrdiff_t N)
    size_t panel_size_d(ptrdiff_t K, ptrdiff_t N)
    void panel_pack_f(ptrdiff_t K, ptrdiff_t N, const float* src, ptrdiff_t k_stride,
                      ptrdiff_t n_stride, float* packed)
    void panel_pack_d(ptrdiff_t K, ptrdiff_t N, const double* src, ptrdiff_t k_stride,
                      ptrdiff_t n_stride, double* packed)
    void panel_gemm_f(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const float* A, ptrdiff_t lda,
                      const float* packed, float* C, ptrdiff_t ldc, int accumulate)
    void panel_gemm_d(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const double* A, ptrdiff_t lda,
                      const double* packed, double* C, ptrdiff_t ldc, int accumulate)


cdef inline size_t packed_bytes(size_t itemsize, ptrdiff_t K, ptrdiff_t N) noexcept nogil:
    """Bytes a packed K x N operand takes, for elements of `itemsize` bytes."""
    if itemsize == sizeof(float):
        return panel_size_f(K, N) * sizeof(float)
    return panel_size_d(K, N) * sizeof(double)


cdef inline void pack(ptrdiff_t K, ptrdiff_t N, const floating* src, ptrdiff_t k_stride,
                      ptrdiff_t n_stride, floating* packed) noexcept nogil:
    """Packs the K x N operand Bmat[k][n] = src[k * k_stride + n * n_stride]."""
    if floating is float:
        panel_pack_f(K, N, src, k_stride, n_stride, packed)
    else:
        panel_pack_d(K, N, src, k_stride, n_stride, packed)


cdef inline void panel_product(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const floating* A,
                               ptrdiff_t lda, const floating* packed, floating* C,
                               ptrdiff_t ldc, bint accumulate) noexcept nogil:
    """C (M x N) = A (M x K) Bmat, or C += A Bmat, with Bmat packed by `pack`."""
    if floating is float:
        panel_gemm_f(M, N, K, A, lda, packed, C, ldc, accumulate)
    else:
        panel_gemm_d(M, N, K, A, lda, packed, C, ldc, accumulate)
