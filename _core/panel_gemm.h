/* Row-major C (M x N) [+]= A (M x K) Bmat (K x N): recur's kernel for large products
 * (blas.pyx) and for the recurrence's per-step ones, Bmat packed into panels of PANEL
 * columns (the recurrence's weights once per sequence).
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
 * and -march=native the vector arithmetic becomes FMA instructions. */
#ifndef RECUR_PANEL_GEMM_H
#define RECUR_PANEL_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The widest vectors the target has, and rows of A per kernel call: 2 * PANEL_ROWS vector
 * accumulators are enough independent FMAs to cover their latency and, with the two panel
 * vectors and the broadcast value, still fit the register file (32 registers with AVX-512,
 * 16 below it). */
#if defined(__AVX512F__)
#define VECTOR_BYTES 64
#define PANEL_ROWS 12
#elif defined(__AVX__)
#define VECTOR_BYTES 32
#define PANEL_ROWS 6
#else
#define VECTOR_BYTES 16
#define PANEL_ROWS 6
#endif

/* Whether products should run here at all. The kernel pays where the build targets the
 * CPU's wide vector units (-march=native on x86 with AVX); a portable build (SSE2) or one
 * for another architecture keeps every product on the BLAS, whose kernels choose the CPU's
 * best at run time (`python -m recur demo` ran over 10 minutes on these panels built for
 * SSE2, 31 s on the BLAS). */
#if defined(__AVX__)
#define PANEL_KERNEL 1
#else
#define PANEL_KERNEL 0
#endif

/* A block of fewer than PANEL_ROWS rows, with its count a constant so the loops unroll. The
 * blocks of 6 to 11 rows exist only where PANEL_ROWS is 12: below it they would never be
 * taken, and GCC warns about their accumulators past the array's end. */
#define PANEL_TAIL(suffix, rows)                                                            \
    case rows: panel_block_##suffix(rows, vectors, K, A + i * a_row, a_row, a_k, by_table,  \
                                    columns, column_at + i, panel, b_row, prefetch_end,     \
                                    C + i * ldc, ldc, width, accumulate); break;
#if PANEL_ROWS > 6
#define PANEL_WIDE_TAILS(suffix)                                                            \
    PANEL_TAIL(suffix, 11) PANEL_TAIL(suffix, 10) PANEL_TAIL(suffix, 9)                     \
    PANEL_TAIL(suffix, 8) PANEL_TAIL(suffix, 7) PANEL_TAIL(suffix, 6)
#else
#define PANEL_WIDE_TAILS(suffix)
#endif

/* Values of k per pass over the panels for a gathered A, so that its block stays in cache
 * while every panel meets it. Measured on the products of bench/ when every A went this
 * way (Zen 3 EPYC): 512 beat 128, 256 and 1024 (a step's 32 x 2048 x 640 product ran 10%
 * faster than at 256, none ran slower). */
#define PANEL_DEPTH 512
/* Bytes of a pass's panels that all of a gathered A's blocks meet before the next panels:
 * within the L2 cache, each block after the first finds them there. Meeting all the
 * panels at once, each block of a product with 1024 columns streamed 2 MB from L3 (Xeon
 * AVX-512, one thread, GFLOP/s: 1024³ 115-126 -> 142-145, 4096 x 1024 x 800 118-120 ->
 * 136-141; up to 512 columns the panels make one group as before; bench/, A/B in one
 * process: LSTM and GRU training at 256,1024,32,25 4-5% faster, `@` of 1024³ on one
 * thread 115 -> 133). The groups are of equal size. */
#define PANEL_GROUP_BYTES (1 << 20)
/* The same for A read in place, a recurrent step's few rows, whose passes are instead as
 * deep as this allows and all of one depth: what stays in cache there is the panel, met
 * by every row in turn, and each pass costs a load and a store of C. A stacked step's
 * 641 values of k went in passes of 512 and 129 (Xeon AVX-512, one thread, GFLOP/s at
 * 512 -> here: 32 x 2048 x 641 132.6 -> 146.7, 64 x 2048 x 641 147.7 -> 155.1, 64 x 512
 * x 2048 143.7 -> 147.2; 32 x 1024 x 1281 in passes of 641 134.5 -> 137.2. bench/, A/B in
 * one process: LSTM 128,512,64,50 inference 68.9 -> 65.2 ms on one thread, 38.0 -> 37.5
 * on two; RNN and GRU training at 256,1024,32,25 2% faster). */
#define PANEL_DEPTH_IN_PLACE 1024

/* Rows of a panel ahead of the k loop that it asks the L2 cache for. A recurrent layer's
 * weights past the L2 and L3 caches (LSTM 256,1024: 16 MB, every step) otherwise arrive
 * only as fast as the hardware's prefetcher follows a panel, which with AVX-512 is slower
 * than the arithmetic (Zen 5 EPYC, one thread, 32 x 4096 x 1024 on packed panels:
 * 160-187 -> 213-232 GFLOP/s; products whose panels stay in cache, and AVX2, unchanged). */
#define PANEL_PREFETCH_ROWS 64
/* The prefetch stops at the end of the packed operand (`prefetch_end`). Past it lie other
 * buffers, such as the rows a row split's other thread writes on every step (ops_rnn's
 * stage, carved right after the stacked panels): asking for those lines took them from
 * that core, whose next write then had to take them back. bench/, alternate runs in one
 * process (Xeon with AVX-512, 2 vCPUs): RNN 32,64,16,50 inference 0.139 -> 0.080 ms,
 * LSTM 0.314 -> 0.231; RNN 32,128,32,100 0.86 -> 0.66, LSTM 2.53 -> 2.28. */

/* Rows of a block of W read in place (panel_gemm_transposed) when W's rows lie a multiple
 * of ALIASING_BYTES apart. The kernel walks a block's rows side by side, a value of k from
 * each; at such a distance all of them map to one set of the L1 cache, and PANEL_ROWS of
 * them, more than the set's 8 ways, evict each other's lines before the lines' other
 * values of k are used. A block of 8 fits the set (Zen 4 EPYC, one thread, GFLOP/s, 12
 * rows -> 8: 32 x 1024 x 4096 100.4 -> 106.3; W's rows padded to 1040 values instead,
 * 106.5; `Dense(1024, 1024)` on 16 rows 396 -> 304-309 µs, on two threads 216 -> 167;
 * `Dense(1024, 4096)` on 32 rows 2.68-2.75 -> 2.49-2.59 ms, on two threads 1.38-1.47 ->
 * 1.29-1.37; bench/ 256,1024,32,25 inference, medians of alternate processes, one
 * thread: LSTM sequence 83.5 -> 79.2 ms, stepwise 86.8 -> 82.4, GRU sequence 62.9 ->
 * 59.9, RNN unchanged; two threads: LSTM 43.8 -> 42.0, GRU 32.3 -> 30.4). Timed while the
 * machine ran slower, the same products seemed to gain nothing. */
#define ALIASING_BYTES 4096
#define ALIASED_ROWS (PANEL_ROWS < 8 ? PANEL_ROWS : 8)

/* __builtin_shuffle, for transpose, is GCC's; elsewhere packing stays scalar (and a
 * stand-in lets the transpose, never called there, compile). */
#if defined(__GNUC__) && !defined(__clang__)
#define PANEL_TRANSPOSES 1
#else
#define PANEL_TRANSPOSES 0
#define __builtin_shuffle(a, b, mask) (a)
#endif

/* c[0, rows) [+]= the first `rows` lanes of v (rows <= its lanes) in one masked load and
 * store: how a transposed block's rows go out into C (tile_columns_out), where AVX-512 has
 * them (AVX2's masked stores, slow on AMD's cores, were not tried). Copied through memory
 * instead, the lanes waited on forwarding the vector's store to narrower loads: LSTM
 * 32,128 stepwise inference ran 13% slower than the scalar loop (Zen 4 EPYC, one thread). */
#if defined(__AVX512F__) && PANEL_TRANSPOSES
#include <immintrin.h>
#define TILE_OUT_VECTORS 1
#define LANES_OUT(suffix, c, v, rows, accumulate) lanes_out_##suffix(c, v, rows, accumulate)
static inline __attribute__((always_inline)) void
lanes_out_f(float* c, __m512 v, const int rows, int accumulate)
{
    const __mmask16 mask = (__mmask16)((1u << rows) - 1);
    if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c), v);
    _mm512_mask_storeu_ps(c, mask, v);
}
static inline __attribute__((always_inline)) void
lanes_out_d(double* c, __m512d v, const int rows, int accumulate)
{
    const __mmask8 mask = (__mmask8)((1u << rows) - 1);
    if (accumulate) v = _mm512_add_pd(_mm512_maskz_loadu_pd(mask, c), v);
    _mm512_mask_storeu_pd(c, mask, v);
}
#else
#define TILE_OUT_VECTORS 0
#define LANES_OUT(suffix, c, v, rows, accumulate) ((void)(c), (void)(v))
#endif

/* Loads a panel's vectors once per k into registers. Left to itself, GCC folds them into
 * the FMAs of blocks of up to 4 rows, loading each vector again for every row: with AVX2's
 * two loads per cycle a 4-row block then waits on 12 loads for its 8 FMAs (Zen 3, one
 * thread, 8 x 97 x 256, a batch of 16 split between two threads: 57.9 -> 92.2 GFLOP/s). An
 * empty asm that claims to change the values keeps them in the registers they were
 * loaded into. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__AVX__)
#define PANEL_IN_REGISTERS(p0, p1) __asm__("" : "+x"(p0), "+x"(p1))
#define VECTOR_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define PANEL_IN_REGISTERS(p0, p1) ((void)0)
#define VECTOR_IN_REGISTER(v) ((void)0)
#endif

/* From this many rows of A on, its blocks are gathered (panel_gemm). */
#define PANEL_GATHER_ROWS 256
/* Panels of a product beyond which A's columns given by a table (a_columns) are gathered
 * too, however few its rows (panel_gemm). */
#define TABLE_IN_PLACE_PANELS 4

/* Products A Wᵀ of at most this many columns take few_columns. */
#define FEW_COLUMNS 4
#define FEW_CASE(suffix, n)                                                                 \
    case n: few_block_##suffix(n, K, A, lda, W, ldw, K2, A2, lda2, W2, ldw2, bias, bias_row, \
                               bias_column, C, ldc, ldc_column, accumulate, first_row,      \
                               end_row);                                                    \
            break;

/* Rows of C few_columns works on side by side: up to 16 accumulators, which AVX-512's 32
 * registers hold with room to spare. With half the registers, a row at a time as before
 * (not measured otherwise). */
#if VECTOR_BYTES >= 64
#define FEW_COLUMN_ROWS 4
#else
#define FEW_COLUMN_ROWS 1
#endif

/* Products A Bmat of at most this inner size take few_inner. */
#define FEW_INNER 4
#define FEW_INNER_CASE(suffix, k)                                                           \
    case k: few_inner_block_##suffix(k, N, A, a_row, a_k, Bmat, ldb, C, ldc, accumulate,    \
                                     first_row, end_row);                                   \
            break;

/* Products Aᵀ Bmat onto at most this many rows of C take few_rows, with this many vectors
 * of each row in registers at a time: FEW_ROWS rows of them, the vectors of Bmat's row and
 * a broadcast value of A fit the register file (32 registers with AVX-512, 16 below). */
#define FEW_ROWS FEW_COLUMNS
#if defined(__AVX512F__)
#define FEW_ROWS_VECTORS 6
#else
#define FEW_ROWS_VECTORS 3
#endif
#define FEW_ROWS_CASE(suffix, m)                                                            \
    case m: few_rows_block_##suffix(m, K, A, lda, Bmat, ldb, C, ldc, accumulate,            \
                                    first_column, end_column, run, skip);                   \
            break;
/* The whole vectors of columns short of a chunk, in one pass over k (few_rows_block): the
 * cases of 3 vectors and more exist only where a chunk is wider. */
#define FEW_ROWS_REST(suffix, v)                                                            \
    case v: few_rows_chunk_##suffix(M, v, K, A, lda, Bmat, ldb, C, ldc, accumulate, j, run, \
                                    skip);                                                  \
            j += v * LANES_##suffix;                                                        \
            break;
#if FEW_ROWS_VECTORS > 3
#define FEW_ROWS_WIDE_RESTS(suffix)                                                         \
    FEW_ROWS_REST(suffix, 5) FEW_ROWS_REST(suffix, 4) FEW_ROWS_REST(suffix, 3)
#else
#define FEW_ROWS_WIDE_RESTS(suffix)
#endif

/* lane_sum's quarter vectors, which must hold a double: with SSE (where the panels are not
 * used) the quarter is the half, and lane_sum halves once. */
#define VECTOR_QUARTER_BYTES (VECTOR_BYTES / 4 >= 8 ? VECTOR_BYTES / 4 : 8)


/* panel_block's loop over k, from p up to `stop`, prefetching or not (`fetching`, a
 * constant); with `by_table`, A's values of each k from that k's column. */
#define PANEL_K_LOOP(scalar, suffix, stop, fetching)                                        \
    for (; p < (stop); p += b_row, A += a_k, A4 += a_k, A8 += a_k) {                       \
        if (by_table) {                                                                     \
            A = *columns++ + column_at;                                                     \
            A4 = A + 4 * a_row;                                                             \
            A8 = A + 8 * a_row;                                                             \
        }                                                                                   \
        if (fetching) {                                                                     \
            __builtin_prefetch(p + ahead, 0, 2);                                            \
            if (vectors == 2) __builtin_prefetch(p + ahead + LANES_##suffix, 0, 2);        \
        }                                                                                   \
        vec_##suffix p0 = ((const vec_##suffix*)p)[0];                                      \
        vec_##suffix p1 = vectors == 2 ? ((const vec_##suffix*)p)[1] : p0;                  \
        PANEL_IN_REGISTERS(p0, p1);                                                         \
        for (int i = 0; i < rows; i++) {                                                    \
            const scalar* base = i < 4 ? A : i < 8 ? A4 : A8;                               \
            const int in_four = i % 4;                                                      \
            scalar a = in_four == 0 ? base[0] : in_four == 1 ? base[a_row]                  \
                       : in_four == 2 ? base[2 * a_row] : base[a_row_3];                    \
            acc[i][0] += a * p0;                                                            \
            if (vectors == 2) acc[i][1] += a * p1;                                          \
        }                                                                                   \
    }

#define DEFINE_PANEL_GEMM(scalar, suffix, lane_index)                                                   \
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
/* Transposes LANES x LANES values held as LANES vectors, in log2(LANES) rounds: the round \
 * at distance d swaps, between rows i and i + d (d not in i), the lanes with d set in     \
 * row i with the lanes without it in row i + d. Every loop is unrolled, the rounds counted \
 * up to a fixed 4 (LANES is at most 16), so that each shuffle's mask is a constant: left   \
 * to build them at run time, GCC made AVX2's shuffles from variable permutes and blends,   \
 * and packing took 6 times as long (Zen 3, Aᵀ of 32 x 160 floats: 5.9 -> 0.9 µs). */       \
static inline __attribute__((always_inline)) void                                           \
transpose_##suffix(vec_##suffix* rows)                                                      \
{                                                                                           \
    _Pragma("GCC unroll 16")                                                                \
    for (int round = 1; round <= 4; round++) {                                              \
        const int d = LANES_##suffix >> round;                                              \
        if (d == 0) break;                                                                  \
        typedef lane_index index_##suffix __attribute__((vector_size(VECTOR_BYTES)));       \
        index_##suffix low, high;                                                           \
        _Pragma("GCC unroll 16")                                                            \
        for (int l = 0; l < LANES_##suffix; l++) {                                          \
            low[l] = (l & d) ? LANES_##suffix + l - d : l;                                  \
            high[l] = (l & d) ? LANES_##suffix + l : l + d;                                 \
        }                                                                                   \
        _Pragma("GCC unroll 16")                                                            \
        for (int i = 0; i < LANES_##suffix; i++)                                            \
            if (!(i & d)) {                                                                 \
                vec_##suffix a = rows[i], b = rows[i + d];                                  \
                rows[i] = __builtin_shuffle(a, b, low);                                     \
                rows[i + d] = __builtin_shuffle(a, b, high);                                \
            }                                                                               \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* into[j][i] [+]= block[i][j] for rows i in [first_row, end_row) and columns j in          \
 * [first_column, end_column) of the block: a weight gradient computed as its transpose,    \
 * sent into the gradient. Whole tiles of LANES x LANES go as LANES vector loads, a         \
 * transpose and LANES vector stores; each value still gets one addition, so the sums are   \
 * those of the scalar loop, which takes the edges. Scalar, each value of a tile's column   \
 * was a load of its own from a line of its own (Zen 4, one thread, 256 x 64 floats: 39 ->  \
 * 1.8 µs). */                                                                              \
static void panel_transpose_into_##suffix(ptrdiff_t first_row, ptrdiff_t end_row,           \
                                          ptrdiff_t first_column, ptrdiff_t end_column,     \
                                          const scalar* block, ptrdiff_t ld, scalar* into,  \
                                          ptrdiff_t into_ld, int accumulate)                \
{                                                                                           \
    const ptrdiff_t lanes = LANES_##suffix;                                                 \
    ptrdiff_t whole_rows = first_row, whole_columns = first_column;                         \
    if (PANEL_TRANSPOSES && end_row - first_row >= lanes                                    \
            && end_column - first_column >= lanes) {                                        \
        whole_rows += (end_row - first_row) / lanes * lanes;                                \
        whole_columns += (end_column - first_column) / lanes * lanes;                       \
        for (ptrdiff_t j0 = first_column; j0 < whole_columns; j0 += lanes)                  \
            for (ptrdiff_t i0 = first_row; i0 < whole_rows; i0 += lanes) {                  \
                vec_##suffix tile[LANES_##suffix];                                          \
                for (int r = 0; r < LANES_##suffix; r++)                                    \
                    tile[r] = *(const vec_##suffix*)(block + (i0 + r) * ld + j0);           \
                transpose_##suffix(tile);                                                   \
                for (int c = 0; c < LANES_##suffix; c++) {                                  \
                    vec_##suffix* out = (vec_##suffix*)(into + (j0 + c) * into_ld + i0);    \
                    *out = accumulate ? *out + tile[c] : tile[c];                           \
                }                                                                           \
            }                                                                               \
    }                                                                                       \
    /* The edges: rows past the whole tiles over every column, and the columns past them    \
     * over the whole tiles' rows. */                                                       \
    for (ptrdiff_t j = first_column; j < end_column; j++) {                                 \
        scalar* row = into + j * into_ld;                                                   \
        ptrdiff_t i = j < whole_columns ? whole_rows : first_row;                           \
        for (; i < end_row; i++)                                                            \
            row[i] = accumulate ? row[i] + block[i * ld + j] : block[i * ld + j];           \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Packs panels [first_panel, end_panel) of Bmat[k][n] = src[k * k_stride + n * n_stride] \
 * (k < K, n < N) into `packed`, panel p starting panel_stride values after panel p - 1:   \
 * K * PANEL for an operand of its own (panel_size values in all), more where operands     \
 * stacked along k share each panel, each packed from its first row on. A transposed       \
 * source (the weights W of A Wᵀ: k_stride 1) is read a vector along k per column and      \
 * turned around by transpose, a tile of LANES x LANES at a time, where the compiler can. */ \
static void panel_pack_##suffix(ptrdiff_t K, ptrdiff_t N, const scalar* src,               \
                                ptrdiff_t k_stride, ptrdiff_t n_stride, scalar* packed,     \
                                ptrdiff_t panel_stride, ptrdiff_t first_panel,              \
                                ptrdiff_t end_panel)                                        \
{                                                                                           \
    for (ptrdiff_t p = first_panel; p < end_panel; p++) {                                   \
        ptrdiff_t n0 = p * PANEL_##suffix;                                                  \
        ptrdiff_t width = N - n0 < PANEL_##suffix ? N - n0 : PANEL_##suffix;                \
        scalar* row = packed + p * panel_stride;                                            \
        const scalar* from = src + n0 * n_stride;                                           \
        ptrdiff_t k = 0;                                                                    \
        /* A half panel (a batch of LANES rows, or a row split's part of them) likewise,   \
         * its second half zero (Xeon AVX-512, one thread: Aᵀ of a 16-row step, 96 x 16     \
         * floats, 0.34 -> 0.13 µs). */                                                     \
        if (PANEL_TRANSPOSES && k_stride == 1                                               \
                && (width == PANEL_##suffix || width == LANES_##suffix))                    \
            for (; k + LANES_##suffix <= K; k += LANES_##suffix) {                          \
                for (int half = 0; half < width / LANES_##suffix; half++) {                 \
                    vec_##suffix tile[LANES_##suffix];                                      \
                    for (int j = 0; j < LANES_##suffix; j++)                                \
                        tile[j] = *(const vec_##suffix*)                                    \
                            (from + (half * LANES_##suffix + j) * n_stride + k);            \
                    transpose_##suffix(tile);                                               \
                    for (int j = 0; j < LANES_##suffix; j++)                                \
                        memcpy(row + (k + j) * PANEL_##suffix + half * LANES_##suffix,      \
                               &tile[j], sizeof(tile[j]));                                  \
                }                                                                           \
                if (width == LANES_##suffix)                                                \
                    for (int j = 0; j < LANES_##suffix; j++)                                \
                        memset(row + (k + j) * PANEL_##suffix + LANES_##suffix, 0,          \
                               sizeof(vec_##suffix));                                       \
            }                                                                               \
        for (; k < K; k++) {                                                                \
            scalar* out = row + k * PANEL_##suffix;                                         \
            const scalar* in = from + k * k_stride;                                         \
            ptrdiff_t j = 0;                                                                \
            for (; j < width; j++) out[j] = in[j * n_stride];                               \
            for (; j < PANEL_##suffix; j++) out[j] = 0;                                     \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* `rows` (at most PANEL_ROWS) rows of A against one panel into C's `width` columns, on    \
 * the panel's first `vectors` (1 or 2) vectors: `width` is at most that many lanes.         \
 * Inlined with constant `rows` and `vectors` the loops unroll and the accumulators live in  \
 * registers. With `by_table` (a constant), A[i][k] = columns[k][column_at + i · a_row]:  \
 * a transposed A whose columns lie wherever they are, read where they lie (a_k 0). */      \
static inline __attribute__((always_inline)) void                                           \
panel_block_##suffix(const int rows, const int vectors, ptrdiff_t K, const scalar* A,      \
                     ptrdiff_t a_row, ptrdiff_t a_k, const int by_table,                    \
                     const scalar* const* columns, ptrdiff_t column_at,                     \
                     const scalar* panel, ptrdiff_t b_row, const scalar* prefetch_end,      \
                     scalar* C, ptrdiff_t ldc, ptrdiff_t width, int accumulate)             \
{                                                                                           \
    vec_##suffix acc[PANEL_ROWS][2];                                                        \
    /* C's columns load into the accumulators before the k loop, where their latency (C is  \
     * often cold) overlaps the arithmetic. A partial panel's too, though by a copy of       \
     * `width` values: each value of C then sums its products in order of k whether its      \
     * panel is whole or not, so a product's passes over k (panel_gemm) may fall anywhere    \
     * without changing the result. */                                                     \
    const int whole = width == vectors * LANES_##suffix;                                    \
    for (int i = 0; i < rows; i++) {                                                        \
        acc[i][0] = acc[i][1] = (vec_##suffix){0};                                         \
        if (accumulate)                                                                     \
            memcpy(acc[i], C + i * ldc,                                                     \
                   whole ? vectors * sizeof(acc[i][0]) : (size_t)width * sizeof(scalar));   \
    }                                                                                       \
    /* Pointers step through k rather than indexes multiplying: with -fwrapv (Python's  \
     * flags) the compiler may not rewrite products of indexes into steps itself. */        \
    const scalar* p_end = panel + K * b_row;                                                \
    const ptrdiff_t ahead = PANEL_PREFETCH_ROWS * b_row;                                    \
    const scalar* p = panel;                                                                \
    /* A's rows by 4 from three pointers, each row at 0, 1, 2 or 3 strides past one: x86     \
     * addresses those as pointer + stride * {4, 8} or + (3 * stride) * 4, in 5 registers. An \
     * address of its own per row (A + i * a_row) took 12, and with the accumulators GCC kept \
     * them on the stack, reloading 12 offsets per k: with the broadcasts and the panel's     \
     * vectors that made 26 loads for 24 FMAs, more than the two load ports issue in the     \
     * FMAs' 12 cycles (Xeon AVX-512, one thread, GFLOP/s: 12 x 32 x 256 170 -> 199, 64 x    \
     * 1024 x 641 159-169 -> 172-181, 64 x 1536 x 128 171-179 -> 184-187). A gathered A,    \
     * whose a_row is the constant 1, compiles to constant offsets either way. */           \
    const scalar* A4 = rows > 4 ? A + 4 * a_row : A;     /* (only where the rows exist) */  \
    const scalar* A8 = rows > 8 ? A + 8 * a_row : A;                                        \
    const ptrdiff_t a_row_3 = 3 * a_row;                                                    \
    /* Rows before `fetching_end` prefetch, those within `ahead` of prefetch_end do not: two \
     * loops rather than a test in one, whose branch took slots of an FMA port (bench/,     \
     * alternate runs in one process, Xeon AVX-512, stepwise inference 32,128,32,100: a test \
     * per row 1-4% slower than no limit, two loops 0-1.5% faster). */                      \
    const scalar* fetching_end = prefetch_end - p_end > ahead ? p_end                       \
                                                              : prefetch_end - ahead;       \
    PANEL_K_LOOP(scalar, suffix, fetching_end, 1)                                           \
    PANEL_K_LOOP(scalar, suffix, p_end, 0)                                                  \
    for (int i = 0; i < rows; i++) {                                                        \
        scalar out[PANEL_##suffix];                                                         \
        scalar* c = C + i * ldc;                                                            \
        if (whole) {                                                                        \
            memcpy(c, acc[i], vectors * sizeof(acc[i][0]));                                 \
            continue;                                                                       \
        }                                                                                   \
        memcpy(out, acc[i], sizeof(out));                                                   \
        memcpy(c, out, (size_t)width * sizeof(scalar));                                     \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Rows [0, M) against one panel, with the row count of each block known to the compiler  \
 * and, for an untransposed A, its unit step in k too. The rows go in the fewest blocks of  \
 * at most PANEL_ROWS, as even as can be: 16 rows as 8 + 8, not 12 + 4, whose short block   \
 * has too few accumulators to keep both FMA units busy (AVX-512 on a Zen 5 EPYC, one       \
 * thread: 16 x 512 x 128 191 -> 214 GFLOP/s, 20 x 512 x 128 211 -> 228; AVX2 unchanged).  \
 */                                                                                         \
static inline __attribute__((always_inline)) void                                           \
panel_rows_##suffix(ptrdiff_t M, const int vectors, ptrdiff_t K, const scalar* A,          \
                    ptrdiff_t a_row, ptrdiff_t a_k, const int by_table,                     \
                    const scalar* const* columns, ptrdiff_t column_at,                      \
                    const scalar* panel, ptrdiff_t b_row, const scalar* prefetch_end,       \
                    scalar* C, ptrdiff_t ldc, ptrdiff_t width, int accumulate)              \
{                                                                                           \
    for (ptrdiff_t i = 0, rows; i < M; i += rows) {                                         \
        ptrdiff_t blocks = (M - i + PANEL_ROWS - 1) / PANEL_ROWS;                           \
        rows = (M - i + blocks - 1) / blocks;                                               \
        switch (rows) {                                                                     \
        PANEL_WIDE_TAILS(suffix)                                                            \
        PANEL_TAIL(suffix, 5) PANEL_TAIL(suffix, 4) PANEL_TAIL(suffix, 3)                   \
        PANEL_TAIL(suffix, 2) PANEL_TAIL(suffix, 1)                                         \
        default:                                                                            \
            panel_block_##suffix(PANEL_ROWS, vectors, K, A + i * a_row, a_row, a_k,         \
                                 by_table, columns, column_at + i, panel, b_row,            \
                                 prefetch_end, C + i * ldc, ldc, width, accumulate);        \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* C [+]= A Bmat on C's rows [first_row, end_row) and columns of the panels [first_panel,  \
 * end_panel), with A[i][k] = A[i * a_row + k * a_k], or, where `a_columns` is not NULL,    \
 * A[i][k] = a_columns[k][i]: a transposed A whose columns lie wherever they are (a         \
 * deferred weight gradient's steps, each its own buffer), gathered from there as from one  \
 * array. Panel p of Bmat starts at panels + p * panel_stride, its row k b_row values       \
 * further: packed by panel_pack that is PANEL and K * PANEL; a row-major Bmat whose panels \
 * are all whole can be read in place, with its row stride and PANEL. Workers sharing a     \
 * product take disjoint ranges, so no two write the same element. */                     \
static void panel_gemm_##suffix(ptrdiff_t N, ptrdiff_t K, const scalar* A, ptrdiff_t a_row, \
                                ptrdiff_t a_k, const scalar* const* a_columns,              \
                                const scalar* panels, ptrdiff_t b_row,                      \
                                ptrdiff_t panel_stride, scalar* C, ptrdiff_t ldc,           \
                                int accumulate, ptrdiff_t first_row, ptrdiff_t end_row,     \
                                ptrdiff_t first_panel, ptrdiff_t end_panel)                 \
{                                                                                           \
    /* A tall A's blocks of rows are fetched again for every panel: they are first gathered \
     * into `gathered`, k-major, and meet every panel from there. A short A, of fewer than  \
     * PANEL_GATHER_ROWS rows, is read where it lies, where copying would cost more than it \
     * saves: a recurrent step's rows, and also a transposed A (a_row 1), a weight          \
     * gradient's Bᵀ A over a sequence's rows, whose k walk down its columns a row of A     \
     * apart (Zen 5 EPYC, one thread, GFLOP/s, m x n x K for Bᵀ A into n x m, gathered ->   \
     * in place, alternately in one process: 128 x 32 x 3200 181 -> 204, 384 x 32 x 3200    \
     * 212 -> 227, 64 x 64 x 800 179 -> 224, 128 x 128 x 3200 197 -> 197). Where its        \
     * columns lie in runs (a_columns: a half's steps of a sequence kept part by part, a    \
     * deferred product's segments), every panel meets the runs anew, and beyond            \
     * TABLE_IN_PLACE_PANELS panels gathering them once pays (medians of 3, as fast in      \
     * place: 64 x 64 x 400 1.24x, 128 x 32 x 1600 1.15x, 128 x 128 x 1600 1.07x; 384 x     \
     * 128 x 1600 1.01x, 512 x 128 x 1600 0.98x). */                                        \
    const int table_in_place = a_columns != NULL                                            \
                               && end_panel - first_panel <= TABLE_IN_PLACE_PANELS;         \
    const int transposed_in_place = a_row == 1 && a_k != 1 && a_columns == NULL;            \
    const int in_place = (table_in_place || transposed_in_place                             \
                          || (a_columns == NULL && a_k == 1))                               \
                         && end_row - first_row < PANEL_GATHER_ROWS;                        \
    scalar gathered[PANEL_DEPTH * PANEL_ROWS];                                              \
    ptrdiff_t M = end_row - first_row;                                                      \
    /* The end of Bmat's last panel, past which nothing is prefetched. */                  \
    const scalar* panels_end = panels                                                       \
        + ((N + PANEL_##suffix - 1) / PANEL_##suffix - 1) * panel_stride                    \
        + (K - 1) * b_row + PANEL_##suffix;                                                 \
    const ptrdiff_t passes = in_place && K > PANEL_DEPTH_IN_PLACE                           \
        ? (K + PANEL_DEPTH_IN_PLACE - 1) / PANEL_DEPTH_IN_PLACE : 1;                        \
    const ptrdiff_t step = in_place ? (K + passes - 1) / passes : PANEL_DEPTH;              \
    A += first_row * a_row;                                                                 \
    C += first_row * ldc;                                                                   \
    for (ptrdiff_t k0 = 0; k0 < K; k0 += step) {                                            \
        ptrdiff_t depth = K - k0 < step ? K - k0 : step;                                    \
        int add = accumulate || k0 > 0;                                                     \
        if (in_place) {                                                                     \
            for (ptrdiff_t p = first_panel; p < end_panel; p++) {                           \
                ptrdiff_t n0 = p * PANEL_##suffix;                                          \
                ptrdiff_t width = N - n0 < PANEL_##suffix ? N - n0 : PANEL_##suffix;        \
                const scalar* panel = panels + p * panel_stride + k0 * b_row;               \
                if (a_columns != NULL)                                                      \
                    panel_rows_##suffix(M, 2, depth, A, 1, 0, 1, a_columns + k0, first_row, \
                                        panel, b_row, panels_end, C + n0, ldc, width, add); \
                else if (transposed_in_place)                                               \
                    panel_rows_##suffix(M, 2, depth, A + k0 * a_k, 1, a_k, 0, NULL, 0,      \
                                        panel, b_row, panels_end, C + n0, ldc, width, add); \
                else                                                                        \
                    panel_rows_##suffix(M, 2, depth, A + k0, a_row, 1, 0, NULL, 0, panel,   \
                                        b_row, panels_end, C + n0, ldc, width, add);        \
            }                                                                               \
            continue;                                                                       \
        }                                                                                   \
        const ptrdiff_t panel_bytes = depth * PANEL_##suffix * (ptrdiff_t)sizeof(scalar);   \
        const ptrdiff_t most = PANEL_GROUP_BYTES > panel_bytes                              \
                               ? PANEL_GROUP_BYTES / panel_bytes : 1;                       \
        const ptrdiff_t groups = (end_panel - first_panel + most - 1) / most;               \
        const ptrdiff_t group = groups > 1 ? (end_panel - first_panel + groups - 1) / groups \
                                           : most;                                          \
        for (ptrdiff_t g0 = first_panel; g0 < end_panel; g0 += group) {                     \
          const ptrdiff_t g1 = end_panel - g0 < group ? end_panel : g0 + group;             \
          for (ptrdiff_t i = 0; i < M; i += PANEL_ROWS) {                                   \
            ptrdiff_t rows = M - i < PANEL_ROWS ? M - i : PANEL_ROWS;                       \
            const scalar* from = A + i * a_row + k0 * a_k;                                  \
            if (a_columns != NULL && rows == PANEL_ROWS)                                    \
                for (ptrdiff_t k = 0; k < depth; k++)                                       \
                    memcpy(gathered + k * PANEL_ROWS, a_columns[k0 + k] + first_row + i,    \
                           sizeof(scalar) * PANEL_ROWS);                                    \
            else if (a_columns != NULL)                                                     \
                for (ptrdiff_t k = 0; k < depth; k++) {                                     \
                    const scalar* column = a_columns[k0 + k] + first_row + i;               \
                    for (ptrdiff_t r = 0; r < rows; r++)                                    \
                        gathered[k * PANEL_ROWS + r] = column[r];                           \
                }                                                                           \
            else if (rows == PANEL_ROWS && a_row == 1)   /* a transposed A's whole block */ \
                for (ptrdiff_t k = 0; k < depth; k++, from += a_k)                          \
                    memcpy(gathered + k * PANEL_ROWS, from, sizeof(scalar) * PANEL_ROWS);   \
            else                                                                            \
                for (ptrdiff_t k = 0; k < depth; k++, from += a_k)                          \
                    for (ptrdiff_t r = 0; r < rows; r++)                                    \
                        gathered[k * PANEL_ROWS + r] = from[r * a_row];                     \
            for (ptrdiff_t p = g0; p < g1; p++) {                                           \
                ptrdiff_t n0 = p * PANEL_##suffix;                                          \
                ptrdiff_t width = N - n0 < PANEL_##suffix ? N - n0 : PANEL_##suffix;        \
                panel_rows_##suffix(rows, 2, depth, gathered, 1, PANEL_ROWS, 0, NULL, 0,    \
                                    panels + p * panel_stride + k0 * b_row, b_row,          \
                                    panels_end, C + i * ldc + n0, ldc, width, add);         \
            }                                                                               \
          }                                                                                 \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The sum of a vector's lanes: its halves added, then their halves, then the quarter's     \
 * lanes in order (a fixed order, so the same sum every run). Summing all the lanes one     \
 * after another, or halving down to one lane, took longer (Zen 5: 32 x 3 x 128 0.43 µs     \
 * this way, 0.49 with one halving, 1.6 with shuffles built lane by lane). Where the        \
 * compiler lacks the shuffles, few_columns' accumulators sum this way (lane_sums). */      \
static inline __attribute__((always_inline)) scalar                                         \
lane_sum_##suffix(vec_##suffix v)                                                           \
{                                                                                           \
    typedef scalar half_##suffix __attribute__((vector_size(VECTOR_BYTES / 2)));           \
    typedef scalar quarter_##suffix __attribute__((vector_size(VECTOR_QUARTER_BYTES)));    \
    half_##suffix low, high;                                                                \
    quarter_##suffix q_low, q_high;                                                         \
    scalar sum = 0;                                                                         \
    memcpy(&low, &v, sizeof low);                                                           \
    memcpy(&high, (const char*)&v + sizeof low, sizeof high);                               \
    low += high;                                                                            \
    memcpy(&q_low, &low, sizeof q_low);                                                     \
    if (2 * sizeof q_low == sizeof low) {                                                   \
        memcpy(&q_high, (const char*)&low + sizeof q_low, sizeof q_high);                   \
        q_low += q_high;                                                                    \
    }                                                                                       \
    for (int l = 0; l < (int)(sizeof q_low / sizeof(scalar)); l++) sum += q_low[l];       \
    return sum;                                                                             \
}                                                                                           \
                                                                                            \
/* sums[t] = the sum of acc[t]'s lanes, for `count` accumulators (a power of two, a         \
 * constant). A tree of shuffles over LANES accumulators at a time: each round adds the     \
 * upper half of every accumulator's lanes to its lower half, and packs two accumulators    \
 * into one vector, t beside t + half the vectors left; once a single vector is left, it    \
 * pairs with itself. After the last round, accumulator t's sum lies at lane t * LANES /    \
 * (accumulators in the vector). Each value adds its lanes in the same order (lanes l + d   \
 * into l for d = LANES / 2 down to 1) whichever accumulators share its vectors. Summed one \
 * at a time (lane_sum), a block's 16 sums took 32 halvings and 64 scalar adds; the tree    \
 * takes 30 shuffles and 15 adds for all 16. */                                             \
static inline __attribute__((always_inline)) void                                           \
lane_sums_##suffix(const int count, const vec_##suffix* acc, scalar* sums)                  \
{                                                                                           \
    if (!PANEL_TRANSPOSES) {   /* (their stand-in returns its first operand) */             \
        for (int t = 0; t < count; t++) sums[t] = lane_sum_##suffix(acc[t]);                \
        return;                                                                             \
    }                                                                                       \
    typedef lane_index index_##suffix __attribute__((vector_size(VECTOR_BYTES)));           \
    _Pragma("GCC unroll 16")                                                                \
    for (int first = 0; first < count; first += LANES_##suffix) {                           \
        const int in_vector = count - first < LANES_##suffix ? count - first                \
                                                             : LANES_##suffix;              \
        int left = in_vector;                                                               \
        vec_##suffix v[LANES_##suffix];                                                     \
        _Pragma("GCC unroll 16")                                                            \
        for (int t = 0; t < in_vector; t++) v[t] = acc[first + t];                          \
        _Pragma("GCC unroll 16")                                                            \
        for (int round = 1; round <= 4; round++) {                                          \
            const int d = LANES_##suffix >> round;                                          \
            if (d == 0) break;                                                              \
            index_##suffix low, high;                                                       \
            _Pragma("GCC unroll 16")                                                        \
            for (int l = 0; l < LANES_##suffix; l++) {                                      \
                const int group = l / (2 * d), q = l % (2 * d);                             \
                low[l] = q < d ? group * 2 * d + q : LANES_##suffix + group * 2 * d + q - d; \
                high[l] = low[l] + d;                                                       \
            }                                                                               \
            const int half = left > 1 ? left / 2 : 1;                                       \
            _Pragma("GCC unroll 16")                                                        \
            for (int t = 0; t < half; t++) {                                                \
                vec_##suffix a = v[t], b = left > 1 ? v[t + half] : v[t];                   \
                v[t] = __builtin_shuffle(a, b, low) + __builtin_shuffle(a, b, high);        \
            }                                                                               \
            left = half;                                                                    \
        }                                                                                   \
        scalar lanes[LANES_##suffix];                                                       \
        memcpy(lanes, &v[0], sizeof lanes);                                                 \
        _Pragma("GCC unroll 16")                                                            \
        for (int t = 0; t < in_vector; t++)                                                 \
            sums[first + t] = lanes[t * (LANES_##suffix / in_vector)];                      \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* acc[j + columns * r] += A's row r (lda apart) times W's row j (ldw apart) over K, for    \
 * R rows of A and N of W (constants), a vector of k at a time. A K past its last whole     \
 * vector ends on the vector that ends at K, its lanes already counted zeroed in both       \
 * operands (in W's too, so that an infinite weight adds no 0 x inf); a K under one vector  \
 * (nothing to overlap) goes value by value into `tails`. */                                \
static inline __attribute__((always_inline)) void                                           \
few_dots_##suffix(const int R, const int N, const int columns, ptrdiff_t K,                 \
                  const scalar* A, ptrdiff_t lda, const scalar* W, ptrdiff_t ldw,           \
                  vec_##suffix* acc, scalar* tails)                                         \
{                                                                                           \
    typedef lane_index index_##suffix __attribute__((vector_size(VECTOR_BYTES)));           \
    ptrdiff_t k = 0;                                                                        \
    /* Rows side by side load each vector of A and of W once into a register               \
     * (VECTOR_IN_REGISTER): left to itself GCC folded A's loads into the FMAs, one load of  \
     * each A vector per column of W (Zen 4, one thread, float32, GFLOP/s: 1600 x 3 x 128   \
     * 41 -> 52, 32 x 3 x 128 45 -> 53, 1600 x 4 x 128 42 -> 60, 1600 x 3 x 256 48 -> 68;  \
     * the same sums). A row alone keeps the folded loads, which ran 10% faster there (the  \
     * same CPU built for AVX2, one row at a time). */                                      \
    for (; k + LANES_##suffix <= K; k += LANES_##suffix) {                                  \
        vec_##suffix row_k[FEW_COLUMN_ROWS];       /* each row's vector at k */             \
        for (int r = 0; r < R; r++) {                                                       \
            row_k[r] = *(const vec_##suffix*)(A + r * lda + k);                             \
            if (R > 1) VECTOR_IN_REGISTER(row_k[r]);                                        \
        }                                                                                   \
        for (int j = 0; j < N; j++) {                                                       \
            vec_##suffix w = *(const vec_##suffix*)(W + j * ldw + k);                       \
            if (R > 1) VECTOR_IN_REGISTER(w);                                               \
            for (int r = 0; r < R; r++)                                                     \
                acc[j + columns * r] += row_k[r] * w;                                       \
        }                                                                                   \
    }                                                                                       \
    if (k == K)                                                                             \
        return;                                                                             \
    if (K >= LANES_##suffix) {                                                              \
        /* Lane l of the last vector holds k = K - LANES + l, counted already below k. */   \
        const ptrdiff_t last = K - LANES_##suffix;                                          \
        index_##suffix lane, keep;                                                          \
        for (int l = 0; l < LANES_##suffix; l++) lane[l] = l;                               \
        keep = lane >= (lane_index)(k - last);                                              \
        vec_##suffix row_k[FEW_COLUMN_ROWS];                                                \
        for (int r = 0; r < R; r++) {                                                       \
            vec_##suffix a = *(const vec_##suffix*)(A + r * lda + last);                    \
            row_k[r] = (vec_##suffix)((index_##suffix)a & keep);                            \
        }                                                                                   \
        for (int j = 0; j < N; j++) {                                                       \
            vec_##suffix w = *(const vec_##suffix*)(W + j * ldw + last);                    \
            w = (vec_##suffix)((index_##suffix)w & keep);                                   \
            for (int r = 0; r < R; r++)                                                     \
                acc[j + columns * r] += row_k[r] * w;                                       \
        }                                                                                   \
        return;                                                                             \
    }                                                                                       \
    for (int r = 0; r < R; r++)                                                             \
        for (int j = 0; j < N; j++)                                                         \
            for (ptrdiff_t q = k; q < K; q++)                                               \
                tails[j + columns * r] += A[r * lda + q] * W[j * ldw + q];                  \
}                                                                                           \
                                                                                            \
/* Rows [i, i + R) of C (M x N, N a constant of at most FEW_COLUMNS) [+]= A Wᵀ + A2 W2ᵀ +   \
 * bias for W of N rows and K columns, joined where K2 > 0 by W2 of N rows and K2 columns,  \
 * and where `bias` is not NULL C[i][j]'s bias at bias + i bias_row + j bias_column (one per \
 * row of C, or one per column): a row of A meets each row of W a vector of k at a time,    \
 * into one accumulator per row and column, and then A2's rows meet W2's, into the same;    \
 * their lanes sum at the end (lane_sums). C[i][j] lies at C + i ldc + j ldc_column: 1 for  \
 * a C of rows, ldc for the transpose of one (few_batch). */                                \
static inline __attribute__((always_inline)) void                                           \
few_columns_rows_##suffix(const int R, const int N, ptrdiff_t K, const scalar* A,           \
                          ptrdiff_t lda, const scalar* W, ptrdiff_t ldw, ptrdiff_t K2,      \
                          const scalar* A2, ptrdiff_t lda2, const scalar* W2,               \
                          ptrdiff_t ldw2, const scalar* bias, ptrdiff_t bias_row,           \
                          ptrdiff_t bias_column, scalar* C, ptrdiff_t ldc,                  \
                          ptrdiff_t ldc_column, int accumulate, ptrdiff_t i)                \
{                                                                                           \
    /* N = 3 counts as 4, the fourth column's accumulators zero: lane_sums takes a power    \
     * of two. */                                                                           \
    const int columns = N == 3 ? 4 : N;                                                     \
    vec_##suffix acc[FEW_COLUMN_ROWS * FEW_COLUMNS];                                        \
    scalar tails[FEW_COLUMN_ROWS * FEW_COLUMNS], sums[FEW_COLUMN_ROWS * FEW_COLUMNS];       \
    for (int t = 0; t < R * columns; t++) {                                                 \
        acc[t] = (vec_##suffix){0};                                                         \
        tails[t] = 0;                                                                       \
    }                                                                                       \
    few_dots_##suffix(R, N, columns, K, A + i * lda, lda, W, ldw, acc, tails);              \
    if (K2 > 0)                                                                             \
        few_dots_##suffix(R, N, columns, K2, A2 + i * lda2, lda2, W2, ldw2, acc, tails);    \
    lane_sums_##suffix(R * columns, acc, sums);                                             \
    for (int r = 0; r < R; r++)                                                             \
        for (int j = 0; j < N; j++) {                                                       \
            scalar sum = sums[j + columns * r] + tails[j + columns * r];                    \
            if (bias != NULL) sum += bias[(i + r) * bias_row + j * bias_column];            \
            scalar* c = C + (i + r) * ldc + j * ldc_column;                                 \
            *c = accumulate ? *c + sum : sum;                                               \
        }                                                                                   \
}                                                                                           \
                                                                                            \
/* Rows [first_row, end_row) of C likewise, FEW_COLUMN_ROWS at a time. A row alone chains   \
 * each accumulator through every vector of k, and the FMAs waited on one another; rows     \
 * side by side give them independent work, and each value still sums in the same order     \
 * (Xeon with AVX-512, one thread, float32, µs: 3200 x 3 x 128 52.3 -> 42.2, 32 x 3 x 128   \
 * 0.44 -> 0.34; bench/, medians of alternate processes, RNN 32,128,32,100: stepwise        \
 * training 3.41 -> 3.24 ms, sequence inference 0.760 -> 0.740). */                         \
static inline __attribute__((always_inline)) void                                           \
few_block_##suffix(const int N, ptrdiff_t K, const scalar* A, ptrdiff_t lda,               \
                   const scalar* W, ptrdiff_t ldw, ptrdiff_t K2, const scalar* A2,          \
                   ptrdiff_t lda2, const scalar* W2, ptrdiff_t ldw2, const scalar* bias,    \
                   ptrdiff_t bias_row, ptrdiff_t bias_column, scalar* C, ptrdiff_t ldc,     \
                   ptrdiff_t ldc_column, int accumulate, ptrdiff_t first_row,               \
                   ptrdiff_t end_row)                                                       \
{                                                                                           \
    ptrdiff_t i = first_row;                                                                \
    for (; i + FEW_COLUMN_ROWS <= end_row; i += FEW_COLUMN_ROWS)                            \
        few_columns_rows_##suffix(FEW_COLUMN_ROWS, N, K, A, lda, W, ldw, K2, A2, lda2, W2,  \
                                  ldw2, bias, bias_row, bias_column, C, ldc, ldc_column,    \
                                  accumulate, i);                                           \
    for (; i < end_row; i++)                                                                \
        few_columns_rows_##suffix(1, N, K, A, lda, W, ldw, K2, A2, lda2, W2, ldw2, bias,    \
                                  bias_row, bias_column, C, ldc, ldc_column, accumulate, i); \
}                                                                                           \
                                                                                            \
/* C (M x N) [+]= A Wᵀ for a W of N <= FEW_COLUMNS rows (ldw apart) and K columns, on C's   \
 * rows [first_row, end_row): the product of a layer with few outputs, a Dense head of 1 to \
 * 4. A panel would be mostly zeros there, and so are the BLAS's blocks (Zen 5, one thread, \
 * float32, µs: 32 x 3 x 128 1.35 -> 0.43, 32 x 1 x 128 0.81 -> 0.28, 3200 x 3 x 128 97 ->  \
 * 45; at 8 columns, in two blocks, the BLAS won: 64 x 8 x 32 0.56 -> 1.2). C's columns lie \
 * ldc_column apart (few_columns_rows), inlined into each entry below with its own, and so  \
 * does the bias's layout. */                                                               \
static inline __attribute__((always_inline)) void                                           \
few_columns_into_##suffix(ptrdiff_t N, ptrdiff_t K, const scalar* A, ptrdiff_t lda,         \
                          const scalar* W, ptrdiff_t ldw, ptrdiff_t K2, const scalar* A2,   \
                          ptrdiff_t lda2, const scalar* W2, ptrdiff_t ldw2,                 \
                          const scalar* bias, ptrdiff_t bias_row, ptrdiff_t bias_column,    \
                          scalar* C, ptrdiff_t ldc, ptrdiff_t ldc_column, int accumulate,   \
                          ptrdiff_t first_row, ptrdiff_t end_row)                           \
{                                                                                           \
    switch (N) {                                                                            \
    FEW_CASE(suffix, 1) FEW_CASE(suffix, 2) FEW_CASE(suffix, 3)                             \
    default: few_block_##suffix(FEW_COLUMNS, K, A, lda, W, ldw, K2, A2, lda2, W2, ldw2,     \
                                bias, bias_row, bias_column, C, ldc, ldc_column, accumulate, \
                                first_row, end_row);                                        \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* A C of rows, its columns side by side, and with `bias` (N values, or NULL) its bias per  \
 * column: a Dense layer's x Wᵀ + b, each part of a shared product adding b into the rows   \
 * it writes. Filled with b first by the calling thread, the rows of the helper's part were \
 * lines it then had to fetch from the other core (Zen 4 EPYC, two threads, a Dense(128, 3) \
 * over (100, 32, 128) from numpy: 40.0 µs, 19.8 without a bias, 20.9 with it added here;   \
 * over (50, 16, 64) 5.8 -> 4.0; bench/'s RNN 32,128,32,100 sequence inference, whose       \
 * head reads the rows each thread wrote, 0.724-0.728 -> 0.721-0.724 ms in four pairs of    \
 * alternate processes). The sums are the same: b + s either way. */                        \
static void few_columns_##suffix(ptrdiff_t N, ptrdiff_t K, const scalar* A, ptrdiff_t lda,  \
                                 const scalar* W, ptrdiff_t ldw, const scalar* bias,        \
                                 scalar* C, ptrdiff_t ldc, int accumulate,                  \
                                 ptrdiff_t first_row, ptrdiff_t end_row)                    \
{                                                                                           \
    few_columns_into_##suffix(N, K, A, lda, W, ldw, 0, NULL, 0, NULL, 0, bias, 0, 1, C, ldc, \
                              1, accumulate, first_row, end_row);                           \
}                                                                                           \
                                                                                            \
/* C[m][n] [+]= A's row m times W's row n over K, plus A2's row m times W2's row n over K2  \
 * where K2 > 0, plus bias[n] where bias is not NULL, for a batch of M rows (C's rows ldc   \
 * apart) and W's rows n in [first, end): few_columns on W's rows against a group of the    \
 * batch's rows, FEW_COLUMNS at a time, each group's block of C written transposed and W    \
 * streamed once a group (blas.pyx: few_batch, and reads_batch_in_place on where that       \
 * pays). */                                                                                \
static void few_batch_##suffix(ptrdiff_t M, ptrdiff_t K, const scalar* A, ptrdiff_t lda,    \
                               const scalar* W, ptrdiff_t ldw, ptrdiff_t K2,                \
                               const scalar* A2, ptrdiff_t lda2, const scalar* W2,          \
                               ptrdiff_t ldw2, const scalar* bias, scalar* C,               \
                               ptrdiff_t ldc, int accumulate, ptrdiff_t first,              \
                               ptrdiff_t end)                                               \
{                                                                                           \
    for (ptrdiff_t m0 = 0; m0 < M; m0 += FEW_COLUMNS) {                                     \
        const ptrdiff_t n = M - m0 < FEW_COLUMNS ? M - m0 : FEW_COLUMNS;                    \
        const scalar* A2_rows = K2 > 0 ? A2 + m0 * lda2 : A2;   /* (A2 NULL without K2) */ \
        few_columns_into_##suffix(n, K, W, ldw, A + m0 * lda, lda, K2, W2, ldw2, A2_rows,   \
                                  lda2, bias, 1, 0, C + m0 * ldc, 1, ldc, accumulate, first, \
                                  end);                                                     \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Rows [first_row, end_row) of C (M x N) [+]= A Bmat for an inner size K, a constant of at \
 * most FEW_INNER: each row of C a vector of columns at a time, from the row's K values of   \
 * A and K rows of Bmat (row-major, ldb apart). */                                          \
static inline __attribute__((always_inline)) void                                           \
few_inner_block_##suffix(const int K, ptrdiff_t N, const scalar* A, ptrdiff_t a_row,       \
                         ptrdiff_t a_k, const scalar* Bmat, ptrdiff_t ldb, scalar* C,       \
                         ptrdiff_t ldc, int accumulate, ptrdiff_t first_row,                \
                         ptrdiff_t end_row)                                                 \
{                                                                                           \
    for (ptrdiff_t i = first_row; i < end_row; i++) {                                       \
        scalar a[FEW_INNER];                                                                \
        scalar* c = C + i * ldc;                                                            \
        ptrdiff_t j = 0;                                                                    \
        for (int k = 0; k < K; k++) a[k] = A[i * a_row + k * a_k];                          \
        for (; j + LANES_##suffix <= N; j += LANES_##suffix) {                              \
            vec_##suffix acc = accumulate ? *(vec_##suffix*)(c + j) : (vec_##suffix){0};    \
            for (int k = 0; k < K; k++)                                                     \
                acc += a[k] * *(const vec_##suffix*)(Bmat + k * ldb + j);                   \
            *(vec_##suffix*)(c + j) = acc;                                                  \
        }                                                                                   \
        for (; j < N; j++) {                                                                \
            scalar sum = accumulate ? c[j] : 0;                                             \
            for (int k = 0; k < K; k++) sum += a[k] * Bmat[k * ldb + j];                    \
            c[j] = sum;                                                                     \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* C (M x N) [+]= A Bmat with an inner size K <= FEW_INNER, A[i][k] = A[i * a_row + k *    \
 * a_k], on C's rows [first_row, end_row): a Dense head's dx = dz W. On the panels each    \
 * block of C ran a loop of K steps between its load and its store (Zen 5, float32, one     \
 * thread, 3200 x 3 x 128: 43 µs there, 32 here, where writing C sets the pace). */          \
static void few_inner_##suffix(ptrdiff_t K, ptrdiff_t N, const scalar* A, ptrdiff_t a_row,  \
                               ptrdiff_t a_k, const scalar* Bmat, ptrdiff_t ldb, scalar* C, \
                               ptrdiff_t ldc, int accumulate, ptrdiff_t first_row,          \
                               ptrdiff_t end_row)                                           \
{                                                                                           \
    switch (K) {                                                                            \
    FEW_INNER_CASE(suffix, 1) FEW_INNER_CASE(suffix, 2) FEW_INNER_CASE(suffix, 3)           \
    default: few_inner_block_##suffix(FEW_INNER, N, A, a_row, a_k, Bmat, ldb, C, ldc,       \
                                      accumulate, first_row, end_row);                      \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* `vectors` vectors of C's columns from column j on, in all of C's M rows, [+]= the same   \
 * columns of Aᵀ Bmat: each row of Bmat meets them all in registers. The K rows of A and    \
 * Bmat come in runs of `run`, each `skip` rows past the end of the last (few_rows). */     \
static inline __attribute__((always_inline)) void                                           \
few_rows_chunk_##suffix(const int M, const int vectors, ptrdiff_t K, const scalar* A,       \
                        ptrdiff_t lda, const scalar* Bmat, ptrdiff_t ldb, scalar* C,        \
                        ptrdiff_t ldc, int accumulate, ptrdiff_t j, ptrdiff_t run,          \
                        ptrdiff_t skip)                                                     \
{                                                                                           \
    vec_##suffix acc[FEW_ROWS][FEW_ROWS_VECTORS];                                           \
    scalar* c = C + j;                                                                      \
    for (int i = 0; i < M; i++)                                                             \
        for (int v = 0; v < vectors; v++)                                                   \
            acc[i][v] = accumulate ? *(const vec_##suffix*)(c + i * ldc + v * LANES_##suffix) \
                                   : (vec_##suffix){0};                                     \
    const scalar* a = A;                                                                    \
    const scalar* b = Bmat + j;                                                             \
    for (ptrdiff_t k0 = 0; k0 < K; k0 += run, a += skip * lda, b += skip * ldb)             \
        for (ptrdiff_t k = 0; k < run; k++, a += lda, b += ldb)                             \
            for (int v = 0; v < vectors; v++) {                                             \
                vec_##suffix row = *(const vec_##suffix*)(b + v * LANES_##suffix);          \
                for (int i = 0; i < M; i++) acc[i][v] += a[i] * row;                        \
            }                                                                               \
    for (int i = 0; i < M; i++)                                                             \
        for (int v = 0; v < vectors; v++)                                                   \
            *(vec_##suffix*)(c + i * ldc + v * LANES_##suffix) = acc[i][v];                 \
}                                                                                           \
                                                                                            \
/* Columns [first_column, end_column) of C (M x N, M a constant of at most FEW_ROWS) [+]=   \
 * Aᵀ Bmat, a chunk of vectors at a time, the whole vectors left in one pass more, then the \
 * columns short of a vector one by one. The vectors left went one pass each, and with M    \
 * accumulators, 3 for a head of 3 outputs, each pass waited on its FMAs' latency (Zen 4,   \
 * one thread, 3 x 3200 x 128, half the columns as the crew shares them: 23-26 µs, 17 in  \
 * one pass). */                                                                            \
static inline __attribute__((always_inline)) void                                           \
few_rows_block_##suffix(const int M, ptrdiff_t K, const scalar* A, ptrdiff_t lda,           \
                        const scalar* Bmat, ptrdiff_t ldb, scalar* C, ptrdiff_t ldc,        \
                        int accumulate, ptrdiff_t first_column, ptrdiff_t end_column,       \
                        ptrdiff_t run, ptrdiff_t skip)                                      \
{                                                                                           \
    const ptrdiff_t chunk = FEW_ROWS_VECTORS * LANES_##suffix;                              \
    ptrdiff_t j = first_column;                                                             \
    for (; j + chunk <= end_column; j += chunk)                                             \
        few_rows_chunk_##suffix(M, FEW_ROWS_VECTORS, K, A, lda, Bmat, ldb, C, ldc,          \
                                accumulate, j, run, skip);                                  \
    switch ((end_column - j) / LANES_##suffix) {                                            \
    FEW_ROWS_WIDE_RESTS(suffix)                                                             \
    FEW_ROWS_REST(suffix, 2) FEW_ROWS_REST(suffix, 1)                                       \
    }                                                                                       \
    for (; j < end_column; j++)                                                             \
        for (int i = 0; i < M; i++) {                                                       \
            scalar sum = accumulate ? C[i * ldc + j] : 0;                                   \
            const scalar* a = A + i;                                                        \
            const scalar* b = Bmat + j;                                                     \
            for (ptrdiff_t k0 = 0; k0 < K; k0 += run, a += skip * lda, b += skip * ldb)     \
                for (ptrdiff_t k = 0; k < run; k++, a += lda, b += ldb) sum += *a * *b;     \
            C[i * ldc + j] = sum;                                                           \
        }                                                                                   \
}                                                                                           \
                                                                                            \
/* C (M x N) [+]= Aᵀ Bmat for M <= FEW_ROWS, A (K x M, A[k][i] = A[k * lda + i]) and a      \
 * row-major Bmat (K x N, ldb apart), on C's columns [first_column, end_column): the weight \
 * gradient of a layer with few outputs, a Dense head's dW = dzᵀ x. Neither operand is      \
 * packed. On the panels Bmat was packed whole for C's few rows: in RNN 32,128,32,100       \
 * stepwise training the head's 3 x 128 gradient, 8 steps deferred at a time, took 0.23 ms  \
 * of a 4.2 ms training step (Xeon AVX-512, two threads; bench/, medians of alternate       \
 * processes: that case 4.23 -> 4.06 ms, GRU 8.79 -> 8.56). The K rows of A and Bmat come   \
 * in runs of `run` (a divisor of K; K for all of them in a row), each `skip` rows past     \
 * the end of the last: a part's share of every step's rows (blas.pyx: grouped_few_rows). */ \
static void few_rows_##suffix(ptrdiff_t M, ptrdiff_t K, const scalar* A, ptrdiff_t lda,     \
                              const scalar* Bmat, ptrdiff_t ldb, scalar* C, ptrdiff_t ldc,  \
                              int accumulate, ptrdiff_t first_column, ptrdiff_t end_column, \
                              ptrdiff_t run, ptrdiff_t skip)                                \
{                                                                                           \
    switch (M) {                                                                            \
    FEW_ROWS_CASE(suffix, 1) FEW_ROWS_CASE(suffix, 2) FEW_ROWS_CASE(suffix, 3)              \
    default: few_rows_block_##suffix(FEW_ROWS, K, A, lda, Bmat, ldb, C, ldc, accumulate,    \
                                     first_column, end_column, run, skip);                  \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* A block of Cᵀ, `rows` x `width` in `tile` (its rows PANEL apart), out into C: C[m][r]    \
 * [+]= tile[r][m] + bias[r] (bias NULL: nothing), for a constant `rows` no wider than a    \
 * vector: LANES columns of the tile at a time go through a transpose, and each of C's      \
 * rows takes its `rows` values in one masked store (LANES_OUT). Each value gets the same   \
 * additions in the same order as in tile_out's scalar loop. */                             \
static inline __attribute__((always_inline)) void                                           \
tile_columns_out_##suffix(const int rows, const scalar* tile, ptrdiff_t width,              \
                          const scalar* bias, scalar* C, ptrdiff_t ldc, int accumulate)     \
{                                                                                           \
    vec_##suffix bias_rows = (vec_##suffix){0};                                             \
    if (bias != NULL)                                                                       \
        memcpy(&bias_rows, bias, rows * sizeof(scalar));                                    \
    for (ptrdiff_t m = 0; m < width; m += LANES_##suffix) {                                 \
        vec_##suffix columns[LANES_##suffix];                                               \
        _Pragma("GCC unroll 16")                                                            \
        for (int r = 0; r < LANES_##suffix; r++)                                            \
            columns[r] = r < rows ? *(const vec_##suffix*)(tile + r * PANEL_##suffix + m)   \
                                  : (vec_##suffix){0};                                      \
        transpose_##suffix(columns);                                                        \
        ptrdiff_t n = width - m < LANES_##suffix ? width - m : LANES_##suffix;              \
        for (ptrdiff_t j = 0; j < n; j++)                                                   \
            LANES_OUT(suffix, C + (m + j) * ldc,                                            \
                      bias != NULL ? columns[j] + bias_rows : columns[j], rows,             \
                      accumulate);                                                          \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The same for any block: its usual sizes, PANEL_ROWS and ALIASED_ROWS, as above where     \
 * they fit a vector and AVX-512 stores their rows (TILE_OUT_VECTORS), the rest a value at  \
 * a time. Scalar, every value was a load and a store of its own behind a test of `rows`:   \
 * 9% of the kernel's samples in LSTM 32,128 stepwise inference (Zen 4 EPYC, one thread).   \
 * bench/'s stepwise inference, minimums of alternate processes, ms, one thread: LSTM       \
 * 32,128 6.61-6.67 -> 6.51-6.61, RNN 1.79-1.80 -> 1.73; two: GRU 64,256 17.0-18.0 ->       \
 * 16.4-17.1, LSTM 32,64 0.66 -> 0.64. */                                                   \
static inline __attribute__((always_inline)) void                                           \
tile_out_##suffix(ptrdiff_t rows, const scalar* tile, ptrdiff_t width, const scalar* bias,  \
                  scalar* C, ptrdiff_t ldc, int accumulate)                                 \
{                                                                                           \
    if (TILE_OUT_VECTORS && PANEL_ROWS <= LANES_##suffix && rows == PANEL_ROWS)             \
        tile_columns_out_##suffix(PANEL_ROWS, tile, width, bias, C, ldc, accumulate);       \
    else if (TILE_OUT_VECTORS && ALIASED_ROWS <= LANES_##suffix && rows == ALIASED_ROWS)    \
        tile_columns_out_##suffix(ALIASED_ROWS, tile, width, bias, C, ldc, accumulate);     \
    else                                                                                    \
        for (ptrdiff_t m = 0; m < width; m++) {                                             \
            scalar* c = C + m * ldc;                                                        \
            for (ptrdiff_t r = 0; r < rows; r++) {                                          \
                scalar value = tile[r * PANEL_##suffix + m];                                \
                if (bias != NULL) value += bias[r];                                         \
                c[r] = accumulate ? c[r] + value : value;                                   \
            }                                                                               \
        }                                                                                   \
}                                                                                           \
                                                                                            \
/* Rows [i, i + rows) of W, rows <= PANEL_ROWS, against every panel of Aᵀ (and of A2ᵀ),     \
 * into C's columns [i, i + rows): panel_gemm_transposed's block. */                        \
static inline __attribute__((always_inline)) void                                           \
transposed_block_##suffix(ptrdiff_t i, ptrdiff_t rows, ptrdiff_t M, ptrdiff_t K,            \
                          const scalar* packed, const scalar* packed_end, const scalar* W,  \
                          ptrdiff_t ldw, ptrdiff_t K2, const scalar* packed2,               \
                          const scalar* packed2_end, const scalar* W2, ptrdiff_t ldw2,      \
                          const scalar* bias, scalar* C, ptrdiff_t ldc, int accumulate,     \
                          scalar* tile)                                                     \
{                                                                                           \
    for (ptrdiff_t m0 = 0; m0 < M; m0 += PANEL_##suffix) {                                  \
        ptrdiff_t width = M - m0 < PANEL_##suffix ? M - m0 : PANEL_##suffix;                \
        /* Columns of Aᵀ past `width` are zero: a panel at most half full (a batch of       \
         * up to LANES rows) is computed on its first vector alone (AVX-512, Zen 5, one     \
         * thread: 16 x 256 x 96 99 -> 156 GFLOP/s; bench/ stepwise inference, medians of   \
         * 6 alternate runs: GRU 32,64,16,50 0.69 -> 0.46 ms, LSTM 0.88 -> 0.73). */        \
        if (width <= LANES_##suffix) {                                                      \
            panel_rows_##suffix(rows, 1, K, W + i * ldw, ldw, 1, 0, NULL, 0,                \
                                packed + m0 * K, PANEL_##suffix, packed_end, tile,          \
                                PANEL_##suffix, LANES_##suffix, 0);                         \
            if (K2 > 0)                                                                     \
                panel_rows_##suffix(rows, 1, K2, W2 + i * ldw2, ldw2, 1, 0, NULL, 0,        \
                                    packed2 + m0 * K2, PANEL_##suffix, packed2_end,         \
                                    tile, PANEL_##suffix, LANES_##suffix, 1);               \
        } else {                                                                            \
            panel_rows_##suffix(rows, 2, K, W + i * ldw, ldw, 1, 0, NULL, 0,                \
                                packed + m0 * K, PANEL_##suffix, packed_end, tile,          \
                                PANEL_##suffix, PANEL_##suffix, 0);                         \
            if (K2 > 0)                                                                     \
                panel_rows_##suffix(rows, 2, K2, W2 + i * ldw2, ldw2, 1, 0, NULL, 0,        \
                                    packed2 + m0 * K2, PANEL_##suffix, packed2_end,         \
                                    tile, PANEL_##suffix, PANEL_##suffix, 1);               \
        }                                                                                   \
        tile_out_##suffix(rows, tile, width, bias != NULL ? bias + i : NULL,                \
                          C + m0 * ldc + i, ldc, accumulate);                               \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* C (M x N) [+]= A Wᵀ for a W of N rows (ldw apart) and K columns, computed as its         \
 * transpose W Aᵀ: W, the large operand, is read where it is, a block of PANEL_ROWS rows at  \
 * a time (ALIASED_ROWS at most where they alias), and only Aᵀ, K x M and small when A is a \
 * batch of rows, is packed (`packed`, by panel_pack with k_stride 1). Each block of W      \
 * (rows x K) meets every panel of Aᵀ while it is in cache, and the block of Cᵀ it gives is \
 * written into C's columns. Rows [first_row, end_row) of W, which are C's columns. With  \
 * K2 > 0 a second product A2 W2ᵀ (A2ᵀ in packed2, W2 of N rows and K2 columns) adds into \
 * the same block before it is written, and with `bias` (N values, or NULL) so does bias[n] \
 * on every row: a recurrent step's gates, x Wiᵀ + h Whᵀ + b, leave the kernel once rather  \
 * than pass through C three times. */                                                      \
static void panel_gemm_transposed_##suffix(ptrdiff_t M, ptrdiff_t K, const scalar* packed,  \
                                           const scalar* W, ptrdiff_t ldw, ptrdiff_t K2,     \
                                           const scalar* packed2, const scalar* W2,          \
                                           ptrdiff_t ldw2, const scalar* bias, scalar* C,    \
                                           ptrdiff_t ldc, int accumulate,                    \
                                           ptrdiff_t first_row, ptrdiff_t end_row)           \
{                                                                                           \
    scalar tile[PANEL_ROWS * PANEL_##suffix]                                                \
        __attribute__((aligned(VECTOR_BYTES)));                                             \
    /* Aᵀ and A2ᵀ are usually packed one after the other (gates_product): then the first    \
     * product's prefetch runs on into the second's panels. */                              \
    const scalar* packed_end = packed + panel_size_##suffix(K, M);                          \
    const scalar* packed2_end = K2 > 0 ? packed2 + panel_size_##suffix(K2, M) : packed2;     \
    if (K2 > 0 && packed2 == packed_end) packed_end = packed2_end;                          \
    /* Aliased, W's rows go in the fewest blocks of ALIASED_ROWS at most, as even as can    \
     * be; otherwise in blocks of PANEL_ROWS and what is left (evening those out as well    \
     * made 16 x 64 x 256 5% slower). Each loop inlines its own copy of the block: one loop \
     * choosing between the two sizes made products whose rows do not alias 1-5% slower     \
     * (16 x 64 x 256, 16 x 32 x 256, and a recurrent step's 16 x 32 x 256 with 64 more     \
     * columns of h). */                                                                    \
    const int aliased = (ldw * (ptrdiff_t)sizeof(scalar)) % ALIASING_BYTES == 0             \
        || (K2 > 0 && (ldw2 * (ptrdiff_t)sizeof(scalar)) % ALIASING_BYTES == 0);            \
    if (!aliased)                                                                           \
        for (ptrdiff_t i = first_row; i < end_row; i += PANEL_ROWS) {                       \
            ptrdiff_t rows = end_row - i < PANEL_ROWS ? end_row - i : PANEL_ROWS;           \
            transposed_block_##suffix(i, rows, M, K, packed, packed_end, W, ldw, K2,        \
                                      packed2, packed2_end, W2, ldw2, bias, C, ldc,         \
                                      accumulate, tile);                                    \
        }                                                                                   \
    else                                                                                    \
        for (ptrdiff_t i = first_row, rows; i < end_row; i += rows) {                       \
            ptrdiff_t left = end_row - i;                                                   \
            ptrdiff_t blocks = (left + ALIASED_ROWS - 1) / ALIASED_ROWS;                    \
            rows = (left + blocks - 1) / blocks;                                            \
            transposed_block_##suffix(i, rows, M, K, packed, packed_end, W, ldw, K2,        \
                                      packed2, packed2_end, W2, ldw2, bias, C, ldc,         \
                                      accumulate, tile);                                    \
        }                                                                                   \
}

DEFINE_PANEL_GEMM(float, f, int32_t)
DEFINE_PANEL_GEMM(double, d, int64_t)

#endif
