/* Row-major C (M x N) [+]= A (M x K) Bmat (K x N) for the recurrence's per-step products,
 * with Bmat packed once per sequence into panels of PANEL columns.
 *
 * The weights of a recurrent layer meet T small products in a row (h @ Whᵀ forward,
 * dgates @ Wh backward). A general BLAS call repacks its operands on every call, which for
 * B = 32, H = 128 costs as much as the arithmetic; packing the weights once per sequence
 * leaves only the products. Panel p holds columns [p·PANEL, (p+1)·PANEL) of Bmat as K
 * consecutive rows of PANEL values (zero past N), so the kernel streams it with vector
 * loads while broadcasting one value of A per row. The vector type asks only for the
 * scalar's alignment, so any buffer works (aligned ones load fastest).
 *
 * One definition serves float and double: DEFINE_PANEL_GEMM instantiates it for a scalar
 * type, its vector type (the widest the target has) and a name suffix. Compiled with -O3
 * (and -march=native unless RECUR_PORTABLE=1) the vector arithmetic becomes FMA
 * instructions; without AVX the compiler splits each vector into narrower ones and the
 * code stays correct. */
#ifndef RECUR_PANEL_GEMM_H
#define RECUR_PANEL_GEMM_H

#include <stddef.h>
#include <string.h>

/* The widest vectors the target has, and rows of A per kernel call: 2 * PANEL_ROWS vector
 * accumulators are enough independent FMAs to cover their latency and, with the two panel
 * vectors and the broadcast value, still fit the register file (32 registers with AVX-512,
 * 16 below it). */
#ifdef __AVX512F__
#define VECTOR_BYTES 64
#define PANEL_ROWS 12
#else
#define VECTOR_BYTES 32
#define PANEL_ROWS 6
#endif

/* The last M mod PANEL_ROWS rows, with their count a constant so the loops unroll (the
 * cases past PANEL_ROWS - 1 are never taken below AVX-512). */
#define PANEL_TAIL(suffix, rows)                                                            \
    case rows: panel_block_##suffix(rows, K, A + i * lda, lda, panel, C + i * ldc + n0,     \
                                    ldc, width, accumulate); break;

#define DEFINE_PANEL_GEMM(scalar, suffix)                                                   \
typedef scalar vec_##suffix                                                                 \
    __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(scalar))));                    \
enum { LANES_##suffix = VECTOR_BYTES / sizeof(scalar), PANEL_##suffix = 2 * LANES_##suffix }; \
                                                                                            \
/* Values a packed K x N operand takes. */                                                 \
static inline size_t panel_size_##suffix(ptrdiff_t K, ptrdiff_t N)                          \
{                                                                                           \
    ptrdiff_t panels = (N + PANEL_##suffix - 1) / PANEL_##suffix;                           \
    return (size_t)(panels * K * PANEL_##suffix);                                           \
}                                                                                           \
                                                                                            \
/* Packs Bmat[k][n] = src[k * k_stride + n * n_stride] (k < K, n < N) into `packed`,      \
 * which holds panel_size values. */                                                      \
static void panel_pack_##suffix(ptrdiff_t K, ptrdiff_t N, const scalar* src,               \
                                ptrdiff_t k_stride, ptrdiff_t n_stride, scalar* packed)     \
{                                                                                           \
    for (ptrdiff_t n0 = 0; n0 < N; n0 += PANEL_##suffix) {                                  \
        ptrdiff_t width = N - n0 < PANEL_##suffix ? N - n0 : PANEL_##suffix;                \
        for (ptrdiff_t k = 0; k < K; k++) {                                                 \
            scalar* row = packed + k * PANEL_##suffix;                                      \
            const scalar* from = src + k * k_stride + n0 * n_stride;                        \
            ptrdiff_t j = 0;                                                                \
            for (; j < width; j++) row[j] = from[j * n_stride];                             \
            for (; j < PANEL_##suffix; j++) row[j] = 0;                                     \
        }                                                                                   \
        packed += K * PANEL_##suffix;                                                       \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* `rows` (at most PANEL_ROWS) rows of A against one panel into C's `width` columns.      \
 * Inlined with a constant `rows` the loops unroll and the accumulators live in registers. */ \
static inline __attribute__((always_inline)) void                                           \
panel_block_##suffix(const int rows, ptrdiff_t K, const scalar* A, ptrdiff_t lda,           \
                     const scalar* panel, scalar* C, ptrdiff_t ldc, ptrdiff_t width,        \
                     int accumulate)                                                        \
{                                                                                           \
    vec_##suffix acc[PANEL_ROWS][2];                                                        \
    /* A whole panel's columns of C load into the accumulators before the k loop, where   \
     * their latency (C is often cold) overlaps the arithmetic; a partial one adds after. */ \
    const int whole = width == PANEL_##suffix;                                              \
    for (int i = 0; i < rows; i++) {                                                        \
        if (accumulate && whole)                                                            \
            memcpy(acc[i], C + i * ldc, sizeof(acc[i]));                                    \
        else                                                                                \
            acc[i][0] = acc[i][1] = (vec_##suffix){0};                                     \
    }                                                                                       \
    /* Pointers step through k rather than indexes multiplying: with -fwrapv (Python's  \
     * flags) the compiler may not rewrite products of indexes into steps itself. */        \
    const vec_##suffix* p = (const vec_##suffix*)panel;                                     \
    const vec_##suffix* p_end = p + 2 * K;                                                  \
    for (; p < p_end; p += 2, A++) {                                                        \
        vec_##suffix p0 = p[0], p1 = p[1];                                                  \
        for (int i = 0; i < rows; i++) {                                                    \
            scalar a = A[i * lda];                                                          \
            acc[i][0] += a * p0;                                                            \
            acc[i][1] += a * p1;                                                            \
        }                                                                                   \
    }                                                                                       \
    for (int i = 0; i < rows; i++) {                                                        \
        scalar out[PANEL_##suffix];                                                         \
        scalar* c = C + i * ldc;                                                            \
        if (whole) {                                                                        \
            memcpy(c, acc[i], sizeof(acc[i]));                                              \
            continue;                                                                       \
        }                                                                                   \
        memcpy(out, acc[i], sizeof(out));                                                   \
        if (accumulate)                                                                     \
            for (ptrdiff_t j = 0; j < width; j++) c[j] += out[j];                           \
        else                                                                                \
            memcpy(c, out, (size_t)width * sizeof(scalar));                                 \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* C [+]= A Bmat, A row-major with leading dimension lda, Bmat packed by panel_pack: each  \
 * panel of Bmat meets every block of PANEL_ROWS rows of A while it sits in L1. */          \
static void panel_gemm_##suffix(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const scalar* A,     \
                                ptrdiff_t lda, const scalar* packed, scalar* C,             \
                                ptrdiff_t ldc, int accumulate)                              \
{                                                                                           \
    for (ptrdiff_t n0 = 0; n0 < N; n0 += PANEL_##suffix) {                                  \
        const scalar* panel = packed + n0 * K;                                              \
        ptrdiff_t width = N - n0 < PANEL_##suffix ? N - n0 : PANEL_##suffix;                \
        ptrdiff_t i = 0;                                                                    \
        for (; i + PANEL_ROWS <= M; i += PANEL_ROWS)                                        \
            panel_block_##suffix(PANEL_ROWS, K, A + i * lda, lda, panel, C + i * ldc + n0,  \
                                 ldc, width, accumulate);                                   \
        switch (M - i) {                                                                    \
        PANEL_TAIL(suffix, 11) PANEL_TAIL(suffix, 10) PANEL_TAIL(suffix, 9)                 \
        PANEL_TAIL(suffix, 8) PANEL_TAIL(suffix, 7) PANEL_TAIL(suffix, 6)                   \
        PANEL_TAIL(suffix, 5) PANEL_TAIL(suffix, 4) PANEL_TAIL(suffix, 3)                   \
        PANEL_TAIL(suffix, 2) PANEL_TAIL(suffix, 1)                                         \
        }                                                                                   \
    }                                                                                       \
}

DEFINE_PANEL_GEMM(float, f)
DEFINE_PANEL_GEMM(double, d)

#endif
