# Row-major GEMM, three ways.
#
# Products with a side of at most 4, A Wᵀ over W's few rows (a Dense head's forward) or A B
# over an inner size that small (its dx), run on panel_gemm.h's few_columns and few_inner,
# which work along the long side where a BLAS or a panel block would be mostly empty.
#
# Other small products (up to BLAS_MAX_MACS multiply-adds) go to scipy's BLAS, which is
# column-major: a row-major matrix is its column-major transpose, so row-major
# C = op(A) op(B) is computed as the column-major Cᵀ = op(B)ᵀ op(A)ᵀ (swap the operands and
# the sizes m and n, keep each operand's own transpose flag). OpenBLAS runs those in the
# calling thread.
#
# Larger ones run on recur's own kernel (panel_gemm.h), B packed into panels, shared by the
# crew (crew.h). A threaded OpenBLAS call leaves its pool spinning for a long while after
# it returns; on a 2-core machine that pool and the crew's helper would then fight for the
# second core through every following recurrent step. Keeping every large product on the
# crew keeps one pool in the process; the kernel outruns OpenBLAS too (bench/RESULTS.md: a
# float32 1024³ product at 210-300 GFLOP/s on 2 cores, where OpenBLAS gave 110-165).
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef extern from "panel_gemm.h" nogil:
    size_t panel_size_f(Py_ssize_t K, Py_ssize_t N)
    size_t panel_size_d(Py_ssize_t K, Py_ssize_t N)
    void panel_pack_f(Py_ssize_t K, Py_ssize_t N, const float* src, Py_ssize_t k_stride,
                      Py_ssize_t n_stride, float* packed, Py_ssize_t panel_stride,
                      Py_ssize_t first_panel, Py_ssize_t end_panel)
    void panel_pack_d(Py_ssize_t K, Py_ssize_t N, const double* src, Py_ssize_t k_stride,
                      Py_ssize_t n_stride, double* packed, Py_ssize_t panel_stride,
                      Py_ssize_t first_panel, Py_ssize_t end_panel)
    void panel_gemm_f(Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t a_row,
                      Py_ssize_t a_k, const float* const* a_columns, const float* panels,
                      Py_ssize_t b_row, Py_ssize_t panel_stride, float* C, Py_ssize_t ldc,
                      int accumulate, Py_ssize_t first_row, Py_ssize_t end_row,
                      Py_ssize_t first_panel, Py_ssize_t end_panel)
    void panel_gemm_d(Py_ssize_t N, Py_ssize_t K, const double* A, Py_ssize_t a_row,
                      Py_ssize_t a_k, const double* const* a_columns, const double* panels,
                      Py_ssize_t b_row, Py_ssize_t panel_stride, double* C, Py_ssize_t ldc,
                      int accumulate, Py_ssize_t first_row, Py_ssize_t end_row,
                      Py_ssize_t first_panel, Py_ssize_t end_panel)
    void panel_gemm_transposed_f(Py_ssize_t M, Py_ssize_t K, const float* packed,
                                 const float* W, Py_ssize_t ldw, Py_ssize_t K2,
                                 const float* packed2, const float* W2, Py_ssize_t ldw2,
                                 const float* bias, float* C, Py_ssize_t ldc, int accumulate,
                                 Py_ssize_t first_row, Py_ssize_t end_row)
    void panel_gemm_transposed_d(Py_ssize_t M, Py_ssize_t K, const double* packed,
                                 const double* W, Py_ssize_t ldw, Py_ssize_t K2,
                                 const double* packed2, const double* W2, Py_ssize_t ldw2,
                                 const double* bias, double* C, Py_ssize_t ldc, int accumulate,
                                 Py_ssize_t first_row, Py_ssize_t end_row)
    void panel_transpose_into_f(Py_ssize_t first_row, Py_ssize_t end_row,
                                Py_ssize_t first_column, Py_ssize_t end_column,
                                const float* block, Py_ssize_t ld, float* into,
                                Py_ssize_t into_ld, int accumulate)
    void panel_transpose_into_d(Py_ssize_t first_row, Py_ssize_t end_row,
                                Py_ssize_t first_column, Py_ssize_t end_column,
                                const double* block, Py_ssize_t ld, double* into,
                                Py_ssize_t into_ld, int accumulate)
    void few_columns_f(Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                       const float* W, Py_ssize_t ldw, const float* bias, float* C,
                       Py_ssize_t ldc, int accumulate, Py_ssize_t first_row,
                       Py_ssize_t end_row)
    void few_columns_d(Py_ssize_t N, Py_ssize_t K, const double* A, Py_ssize_t lda,
                       const double* W, Py_ssize_t ldw, const double* bias, double* C,
                       Py_ssize_t ldc, int accumulate, Py_ssize_t first_row,
                       Py_ssize_t end_row)
    void few_batch_f(Py_ssize_t M, Py_ssize_t K, const float* A, Py_ssize_t lda,
                     const float* W, Py_ssize_t ldw, Py_ssize_t K2, const float* A2,
                     Py_ssize_t lda2, const float* W2, Py_ssize_t ldw2, const float* bias,
                     float* C, Py_ssize_t ldc, int accumulate, Py_ssize_t first,
                     Py_ssize_t end)
    void few_batch_d(Py_ssize_t M, Py_ssize_t K, const double* A, Py_ssize_t lda,
                     const double* W, Py_ssize_t ldw, Py_ssize_t K2, const double* A2,
                     Py_ssize_t lda2, const double* W2, Py_ssize_t ldw2, const double* bias,
                     double* C, Py_ssize_t ldc, int accumulate, Py_ssize_t first,
                     Py_ssize_t end)
    void few_inner_f(Py_ssize_t K, Py_ssize_t N, const float* A, Py_ssize_t a_row,
                     Py_ssize_t a_k, const float* Bmat, Py_ssize_t ldb, float* C,
                     Py_ssize_t ldc, int accumulate, Py_ssize_t first_row, Py_ssize_t end_row)
    void few_inner_d(Py_ssize_t K, Py_ssize_t N, const double* A, Py_ssize_t a_row,
                     Py_ssize_t a_k, const double* Bmat, Py_ssize_t ldb, double* C,
                     Py_ssize_t ldc, int accumulate, Py_ssize_t first_row, Py_ssize_t end_row)
    void few_rows_f(Py_ssize_t M, Py_ssize_t K, const float* A, Py_ssize_t lda,
                    const float* Bmat, Py_ssize_t ldb, float* C, Py_ssize_t ldc,
                    int accumulate, Py_ssize_t first_column, Py_ssize_t end_column,
                    Py_ssize_t run, Py_ssize_t skip)
    void few_rows_d(Py_ssize_t M, Py_ssize_t K, const double* A, Py_ssize_t lda,
                    const double* Bmat, Py_ssize_t ldb, double* C, Py_ssize_t ldc,
                    int accumulate, Py_ssize_t first_column, Py_ssize_t end_column,
                    Py_ssize_t run, Py_ssize_t skip)
    int PANEL_f, PANEL_d, PANEL_ROWS, PANEL_GATHER_ROWS, VECTOR_BYTES, FEW_COLUMNS, FEW_INNER
    int FEW_ROWS, FEW_COLUMN_ROWS
    bint PANEL_KERNEL

cdef extern from "memory.h" nogil:
    int BUFFER_PACKED
    int BUFFER_TRANSPOSED
    int BUFFER_HALF_SUM
    void* thread_buffer(int purpose, size_t nbytes)

cdef extern from "deferred.h" nogil:
    int DEFER_SEGMENTS
    ctypedef struct DeferredSegment:
        const void* A
        const void* B
        int lda, ldb, K
    ctypedef struct DeferredProduct:
        void* C
        int M, N, ldc, is_f64, K, n_segments, background
    ctypedef struct Deferrals:
        int n_products
    Deferrals* thread_deferrals()
    DeferredProduct* deferred_product(Deferrals* d, int i)
    const DeferredSegment* deferred_segment(const DeferredProduct* p, int s)
    size_t deferred_extent(int M, int N, int ldc, int is_f64)
    int deferred_writes(const DeferredProduct* p, const char* lo, const char* hi)
    int deferred_overlapping(const Deferrals* d, const char* lo, const char* hi)
    int deferred_slot(Deferrals* d, void* C, int M, int N, int ldc, int is_f64)
    void deferred_append(DeferredProduct* p, const void* A, int lda, const void* B, int ldb,
                         int K)
    void deferred_take(Deferrals* d, int i, DeferredProduct* out)
    int deferred_stage(const DeferredProduct* p, void** A, void** B)
    int DEFER_QUEUE
    ctypedef struct DeferredQueue:
        long retired
    DeferredQueue* deferred_queue()
    DeferredProduct* queued_job(DeferredQueue* q, long n)
    long deferred_claim(DeferredQueue* q)
    long deferred_claim_upto(DeferredQueue* q, long last)
    long deferred_queued(DeferredQueue* q)
    void deferred_publish(DeferredQueue* q)
    int deferred_draining(DeferredQueue* q)
    void deferred_set_draining(DeferredQueue* q, int draining)
    int deferred_done(DeferredQueue* q, long n)
    void deferred_mark_done(DeferredQueue* q, long n)
    void deferred_install_fork_handler()

cdef extern from "pack_cache.h" nogil:
    ctypedef struct PackCache:
        int n_entries
    PackCache* thread_pack_cache()
    void* pack_cache_find(const PackCache* cache, const void* src, Py_ssize_t K,
                          Py_ssize_t N, Py_ssize_t k_stride, Py_ssize_t n_stride, int is_f64)
    void* pack_cache_add(PackCache* cache, const void* src, Py_ssize_t K, Py_ssize_t N,
                         Py_ssize_t k_stride, Py_ssize_t n_stride, int is_f64, size_t nbytes)
    void pack_cache_forget(PackCache* cache)

cdef extern from "crew.h" nogil:
    ctypedef struct crew_claims:
        pass
    void crew_run(crew_task task, void* arg, int split)
    int crew_hold()
    int crew_holds()
    int crew_helper_idle()
    int crew_post(crew_task task, void* arg)
    void crew_release()
    void crew_pause(unsigned long spins)
    void crew_claims_reset(crew_claims* claims, long units)
    long crew_claim(crew_claims* claims, int part)
    int crew_keep_alone(int alone)
    long crew_now_ns()
    long crew_balanced_split(long units, long least)
    void crew_note_split(long first, long units, long ns0, long ns1)
    int crew_pin_share(int share)
    int crew_share()
    enum: CREW_SHARE_ONE


cdef enum:
    # Groups of rows by_rows_of_c shares a group at a time, from this size on: a part's
    # half of a smaller one would cost few_columns a call for a block or two.
    GROUP_MIN_ROWS = 16

cdef enum:
    # A deferred weight-gradient product runs once its steps reach this depth (deferred.h):
    # deep enough that reading and writing the gradient is a small part of the product.
    DEFER_DEPTH = 256
    # Its depth at most: short of DEFER_DEPTH before its last segment, and that segment,
    # deferred only because it was shallower than DEFER_DEPTH, adds less than as much again.
    DEFERRED_MAX_DEPTH = 2 * DEFER_DEPTH
    # Products past this many multiply-adds run on the panels rather than the BLAS, which
    # packs both operands on every call (for a recurrent step's weights, every step). Where
    # the BLAS has AVX-512 kernels it was as fast up to its single-thread limit of 262144
    # (a Xeon: an LSTM 32,64,16 step 14.5 µs there, 14.7 on the panels), but scipy's
    # OpenBLAS runs its AVX2 kernels on CPUs it does not know, and then the panels win from
    # far smaller products on (bench/ stepwise, medians of 6 alternate runs: a Zen 5 EPYC,
    # LSTM 32,64,16,50 inference 1.33 -> 1.04 ms, GRU training 2.97 -> 2.04; a Zen 1 EPYC,
    # LSTM inference 4.3 -> 2.2, with RNN 1.29 -> 1.18 at this limit rather than 65536).
    BLAS_MAX_MACS = 16384
    # Below this much work (a few microseconds) a split costs more in hand-over than it saves.
    SPLIT_MIN_MACS = 65536
    # Except A Wᵀ onto a few columns, a head after a recurrent layer: the crew computed
    # that layer's step by halves of the batch rows, so each thread holds its half of A,
    # and one thread alone would pull the other's rows across. Split like the step, each
    # reads its own (bench/ stepwise inference, A/B alternating in one process: RNN
    # 32,128,32,100 1.73 -> 1.53 ms, RNN 64,256 7.00 -> 6.17, LSTM and GRU 32,128 3% faster;
    # at 2048, 32,64,16's 3072 lost 15-34%: its steps run on one thread). The head's
    # backward (few_inner_part) gained nothing so split: stepwise training 32,128 0-1% slower.
    FEW_COLUMNS_SPLIT_MIN_MACS = 8192
    # A batch of at most this many rows is read in place against weights read in place
    # (few_batch), FEW_COLUMNS of its rows at a time. Against the transposed panels, whose
    # 16 lanes hold 16 rows (Zen 4, one thread, LSTM 64,200 stepwise inference, ms): 9
    # rows 7.55 -> 5.84, 12 7.80 -> 7.11, but 14 8.01 -> 8.50 and 16 7.98 -> 9.32; on two
    # threads, parts of 12 rows (24 in all) 3.63 -> 3.28 (32,128) and 5.95 -> 5.28 (64,256),
    # parts of 16 (64,256,32) 5.9 -> 6.9. W streams once for each FEW_COLUMNS rows: in
    # three passes, only weights that the caches keep from one pass to the next (one
    # thread, Dense, µs, panels -> few_batch: 12 x 256 -> 1024 82 -> 71, 9 x 512 -> 512 80
    # -> 54, 10 x 64 -> 800 18.8 -> 19.2, but 12 x 1024 -> 4096, 16 MB of W, 1287 -> 1433;
    # 1.3 MB, 64,256's, gained, above; between them not measured). Two passes won even
    # there: 8 x 1024 -> 4096 852 -> 833, 8 x 128 -> 512 16.2 -> 14.4.
    FEW_BATCH_ROWS = 12
    FEW_BATCH_ROWS_ANY_WEIGHTS = 8
    FEW_BATCH_THREE_PASSES_MAX_BYTES = 2 << 20
    SPLIT_MIN_PACKED = 65536
    # Units a shared product is cut into for its parts to claim (crew.h: crew_claims):
    # enough that the faster core's extra units even out the cores' speeds, few enough
    # that each still fills the kernel (Zen 3, 1024³: 16, 32 and 64 units of rows within
    # 3% of each other, 32 units of 2 panels 25% slower, A gathered again for each).
    PRODUCT_UNITS = 32
    # A weight gradient Aᵀ B whose rows of A (K x m) take at most this many bytes runs as its
    # transpose Bᵀ A (gradient_as_transpose): A's panels read in place, a pass's depth of
    # all of them within PANEL_GROUP_BYTES. Wider, each of Bᵀ's blocks would stream A's
    # panels from memory again (Xeon AVX-512, one thread, GFLOP/s, C [+]= Aᵀ B as m x n x K,
    # Aᵀ gathered and B packed -> transposed: 384 x 32 x 3200 93.7 -> 136.0, 128 x 128 x
    # 3168 114.1 -> 130.6, 512 x 128 x 3168 127.0 -> 129.2, 768 x 256 x 6336 124.0 -> 127.5;
    # 1024 x 256 x 6336 115.2 -> 94.3, 2048 x 512 x 3136 134.3 -> 87.1).
    TRANSPOSED_GRADIENT_MAX_ROW_BYTES = 2048
    # Shared, such a product goes in this many units of A's panels, all of Bᵀ's rows each.
    # In units of rows, as a gathered A usually goes, each unit streamed all of A's panels
    # (a GRU 32,128,32,100's dWh: 4.9 MB) from L3 again; in halves each thread streams its
    # own once and gathers Bᵀ once (bench/, A/B in alternate processes against gathering
    # Aᵀ, two threads, training, ms: GRU 32,128,32,100 by rows 6.65 -> 6.95, in halves
    # 6.78 -> 6.35, in quarters 6.73 -> 6.43).
    GRADIENT_PANEL_UNITS = 2


# One product (or one packing) as the crew sees it: each part takes its own share.
ctypedef struct Product:
    bint is_f64
    Py_ssize_t M, N, K, a_row, a_k, ldc, panels
    const void* A
    const void* const* a_columns    # or A's columns wherever they lie (panel_gemm.h)
    # Bmat's panels; for a packing its destination, for a transposed product Aᵀ's panels
    void* packed
    Py_ssize_t b_row, panel_stride
    # Bmat[k][n] = src[k * k_stride + n * n_stride], to be packed; a transposed product's W
    const void* src
    Py_ssize_t k_stride, n_stride
    void* C
    bint accumulate
    # a transposed product's second operand (K2 = 0: none) and bias (NULL: none). The
    # second joins the first on W's rows below `joined` only; with C2, its rows from
    # `joined` on go alone into C2's same columns (gates_product). For a batch read in
    # place (reads_batch_in_place) nothing is packed (packed NULL) and A and A2 (rows a_row
    # and a2_row apart) are read where they lie (few_batch).
    Py_ssize_t K2, n_stride2, joined, a2_row
    const void* A2
    const void* packed2
    const void* src2
    const void* bias
    void* C2
    # where each part adds the block of C it computed, transposed (NULL: nowhere), into_ld
    # apart (gradient_as_transpose)
    void* into
    Py_ssize_t into_ld
    bint into_accumulate
    # a shared product's units: `unit` rows of C each (by_rows) or `unit` panels
    crew_claims claims
    bint by_rows
    Py_ssize_t unit
    # by_rows_of_c's rows go by groups of this many, each part taking its share of each
    Py_ssize_t group
    # grouped_few_rows: where the second half's sum went (NULL: nowhere yet)
    void* half_sum


cdef void product_part(void* arg, int part, int parts) noexcept nogil:
    # Alone, the whole product; shared, the units this part claims (`product`).
    cdef Product* p = <Product*>arg
    cdef long unit
    cdef Py_ssize_t first, end
    cdef Py_ssize_t width = panel_width(p.is_f64)
    if parts == 1:
        product_range(p, 0, p.M, 0, p.panels)
        send_transposed(p, 0, p.M, 0, p.N)
        return
    while True:
        unit = crew_claim(&p.claims, part)
        if unit < 0:
            return
        first = unit * p.unit
        if p.by_rows:
            end = min(p.M, first + p.unit)
            product_range(p, first, end, 0, p.panels)
            send_transposed(p, first, end, 0, p.N)
        else:
            end = min(p.panels, first + p.unit)
            product_range(p, 0, p.M, first, end)
            send_transposed(p, 0, p.M, first * width, min(p.N, end * width))


cdef inline void send_transposed(Product* p, Py_ssize_t first_row, Py_ssize_t end_row,
                                 Py_ssize_t first_column, Py_ssize_t end_column) noexcept nogil:
    # The block of C a part has just computed, into p.into's rows (a weight gradient, which
    # it reaches transposed) from the thread whose cache holds it: copied afterwards by
    # the calling thread alone, half of every line came from the other core (LSTM
    # 32,128,32,100 training: 0.32 ms a step in the copies).
    if p.into == NULL:
        return
    if p.is_f64:
        panel_transpose_into_d(first_row, end_row, first_column, end_column,
                               <const double*>p.C, p.ldc, <double*>p.into, p.into_ld,
                               p.into_accumulate)
    else:
        panel_transpose_into_f(first_row, end_row, first_column, end_column,
                               <const float*>p.C, p.ldc, <float*>p.into, p.into_ld,
                               p.into_accumulate)


cdef inline void product_range(Product* p, Py_ssize_t first_row, Py_ssize_t end_row,
                               Py_ssize_t first_panel, Py_ssize_t end_panel) noexcept nogil:
    if p.is_f64:
        panel_gemm_d(p.N, p.K, <const double*>p.A, p.a_row, p.a_k,
                     <const double* const*>p.a_columns, <const double*>p.packed, p.b_row,
                     p.panel_stride, <double*>p.C, p.ldc, p.accumulate, first_row, end_row,
                     first_panel, end_panel)
    else:
        panel_gemm_f(p.N, p.K, <const float*>p.A, p.a_row, p.a_k,
                     <const float* const*>p.a_columns, <const float*>p.packed, p.b_row,
                     p.panel_stride, <float*>p.C, p.ldc, p.accumulate, first_row, end_row,
                     first_panel, end_panel)


cdef void transposed_part(void* arg, int part, int parts) noexcept nogil:
    # Alone, all of W's rows (C's columns); shared, the units this part claims, each
    # `unit` rows in whole blocks of the kernel (`transposed_units`). Claimed rather than
    # halved, a step over weights read in place ran faster (Zen 3, 2 vCPUs, 256,1024,32,25
    # inference, medians of alternate runs in one process: LSTM 11%, GRU 7%).
    cdef Product* p = <Product*>arg
    cdef Py_ssize_t rows = transposed_rows(p)
    cdef long unit
    if parts == 1:
        transposed_range(p, 0, rows)
        return
    while True:
        unit = crew_claim(&p.claims, part)
        if unit < 0:
            return
        transposed_range(p, unit * p.unit, min(rows, (unit + 1) * p.unit))


cdef inline Py_ssize_t transposed_rows(const Product* p) noexcept nogil:
    # Rows of W the parts share: all N, and with C2 the second operand's own rows after.
    return p.N + (p.N - p.joined if p.C2 != NULL else 0)


cdef inline void transposed_units(Product* p) noexcept nogil:
    cdef Py_ssize_t rows = transposed_rows(p)
    cdef Py_ssize_t blocks = (rows + PANEL_ROWS - 1) // PANEL_ROWS
    p.unit = (blocks + PRODUCT_UNITS - 1) // PRODUCT_UNITS * PANEL_ROWS
    crew_claims_reset(&p.claims, (rows + p.unit - 1) // p.unit)


cdef inline void transposed_range(Product* p, Py_ssize_t first, Py_ssize_t end) noexcept nogil:
    # Rows [first, end) of transposed_rows: below `joined` both operands, up to N the
    # first alone (K2 = 0 joins nowhere), past N the second's rows from `joined` on.
    cdef Py_ssize_t K2 = p.K2 if first < p.joined else 0
    cdef Py_ssize_t split = min(end, p.joined) if K2 > 0 else min(end, p.N)
    if first < split:
        transposed_call(p, False, K2, p.bias, p.C, first, split)
    if split < min(end, p.N):
        transposed_call(p, False, 0, p.bias, p.C, split, min(end, p.N))
    if end > p.N:
        first = max(first, p.N) - p.N + p.joined
        transposed_call(p, True, 0, NULL, p.C2, first, end - p.N + p.joined)


cdef inline void transposed_call(Product* p, bint second, Py_ssize_t K2, const void* bias,
                                 void* C, Py_ssize_t first, Py_ssize_t end) noexcept nogil:
    # Rows [first, end) of W (of W2 where `second`), against A (A2), joined by the second
    # operand where K2 > 0.
    cdef Py_ssize_t K = p.K2 if second else p.K
    cdef const void* packed = p.packed2 if second else p.packed
    cdef const void* W = p.src2 if second else p.src
    cdef Py_ssize_t ldw = p.n_stride2 if second else p.n_stride
    if p.packed == NULL:
        if p.is_f64:
            few_batch[double](p, K, <const double*>(p.A2 if second else p.A),
                              p.a2_row if second else p.a_row, <const double*>W, ldw, K2,
                              <const double*>bias, <double*>C, first, end)
        else:
            few_batch[float](p, K, <const float*>(p.A2 if second else p.A),
                             p.a2_row if second else p.a_row, <const float*>W, ldw, K2,
                             <const float*>bias, <float*>C, first, end)
        return
    if p.is_f64:
        panel_gemm_transposed_d(p.M, K, <const double*>packed, <const double*>W, ldw, K2,
                                <const double*>p.packed2, <const double*>p.src2,
                                p.n_stride2, <const double*>bias, <double*>C, p.ldc,
                                p.accumulate, first, end)
    else:
        panel_gemm_transposed_f(p.M, K, <const float*>packed, <const float*>W, ldw, K2,
                                <const float*>p.packed2, <const float*>p.src2,
                                p.n_stride2, <const float*>bias, <float*>C, p.ldc,
                                p.accumulate, first, end)


cdef void few_batch(Product* p, Py_ssize_t K, const floating* A, Py_ssize_t lda,
                    const floating* W, Py_ssize_t ldw, Py_ssize_t K2, const floating* bias,
                    floating* C, Py_ssize_t first, Py_ssize_t end) noexcept nogil:
    # Columns [first, end) of C (p.M <= FEW_BATCH_ROWS rows, p.ldc apart) [+]= A Wᵀ, joined
    # by A2 W2ᵀ where K2 > 0, plus the bias: few_columns on W's rows against A's few, each
    # row of A a vector of k at a time, A2's joining the same sums, written down C's
    # columns (panel_gemm.h: few_batch). On the panels Aᵀ's few columns took a whole vector
    # of lanes, the rest of them zeros, for every value of W (Zen 4, 2 vCPUs, bench/'s
    # steps outside its configs, ms, panels -> this, medians of alternate processes: LSTM
    # 64,200 stepwise inference at batch 1 6.98 -> 1.94, 2 7.11 -> 2.73, 3 8.06 -> 2.66, 4
    # 4.78 -> 2.41; its training at batch 1 10.3 -> 5.5, GRU 7.64 -> 2.80). Each of C's
    # values once summed its two products' lanes apart, a vector at a time and the last
    # values of k one by one; the lanes of both now sum once, in a tree over 16 of C's
    # values, and the last values of k take the vector ending at K (the same, ms: batch 1
    # 1.10 -> 0.87-0.93, 4 2.40 -> 1.57, 8 4.3 -> 2.67; one thread, batch 4 4.17 -> 2.60;
    # a Dense head, 3200 x 128 -> 3, 33.5 -> 25.5-27.9 µs).
    if floating is double:
        few_batch_d(p.M, K, A, lda, W, ldw, K2, <const double*>p.A2, p.a2_row,
                    <const double*>p.src2, p.n_stride2, bias, C, p.ldc, p.accumulate, first,
                    end)
    else:
        few_batch_f(p.M, K, A, lda, W, ldw, K2, <const float*>p.A2, p.a2_row,
                    <const float*>p.src2, p.n_stride2, bias, C, p.ldc, p.accumulate, first,
                    end)


cdef void few_columns_part(void* arg, int part, int parts) noexcept nogil:
    # A share of C's rows: of each group of p.group rows (by_rows_of_c).
    cdef Product* p = <Product*>arg
    cdef Py_ssize_t group = p.group if parts > 1 else p.M, start = 0, first, end
    while start < p.M:
        first, end = start + group * part // parts, start + group * (part + 1) // parts
        start += group
        if p.is_f64:
            few_columns_d(p.N, p.K, <const double*>p.A, p.a_row, <const double*>p.src,
                          p.b_row, <const double*>p.bias, <double*>p.C, p.ldc, p.accumulate,
                          first, end)
        else:
            few_columns_f(p.N, p.K, <const float*>p.A, p.a_row, <const float*>p.src,
                          p.b_row, <const float*>p.bias, <float*>p.C, p.ldc, p.accumulate,
                          first, end)


cdef void few_inner_part(void* arg, int part, int parts) noexcept nogil:
    # A share of C's rows: of each group of p.group rows (by_rows_of_c).
    cdef Product* p = <Product*>arg
    cdef Py_ssize_t group = p.group if parts > 1 else p.M, start = 0, first, end
    while start < p.M:
        first, end = start + group * part // parts, start + group * (part + 1) // parts
        start += group
        if p.is_f64:
            few_inner_d(p.K, p.N, <const double*>p.A, p.a_row, p.a_k, <const double*>p.src,
                        p.b_row, <double*>p.C, p.ldc, p.accumulate, first, end)
        else:
            few_inner_f(p.K, p.N, <const float*>p.A, p.a_row, p.a_k, <const float*>p.src,
                        p.b_row, <float*>p.C, p.ldc, p.accumulate, first, end)


cdef bint takes_few_inner(Py_ssize_t n, Py_ssize_t k, size_t itemsize) noexcept nogil:
    return PANEL_KERNEL and 0 < k <= FEW_INNER and n * itemsize >= VECTOR_BYTES


cdef void few_inner_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                         const floating* b, floating* c) noexcept nogil:
    if floating is double:
        few_inner_d(k, n, a, k, 1, b, n, c, n, False, 0, m)
    else:
        few_inner_f(k, n, a, k, 1, b, n, c, n, False, 0, m)


cdef inline bint rows_in_groups(Py_ssize_t M, Py_ssize_t group) noexcept nogil:
    # Whether a shared product's rows go by groups: whole groups, each part's share of one
    # a few whole blocks of the rows few_columns works on side by side (FEW_COLUMN_ROWS).
    return (group >= GROUP_MIN_ROWS and group % (2 * FEW_COLUMN_ROWS) == 0 and group < M
            and M % group == 0)


cdef void few_rows_part(void* arg, int part, int parts) noexcept nogil:
    # A share of C's columns, in whole vectors.
    cdef Product* p = <Product*>arg
    cdef Py_ssize_t lanes = VECTOR_BYTES // (sizeof(double) if p.is_f64 else sizeof(float))
    cdef Py_ssize_t vectors = (p.N + lanes - 1) // lanes
    cdef Py_ssize_t first = min(p.N, vectors * part // parts * lanes)
    cdef Py_ssize_t end = min(p.N, vectors * (part + 1) // parts * lanes)
    if p.is_f64:
        few_rows_d(p.M, p.K, <const double*>p.A, p.a_k, <const double*>p.src, p.b_row,
                   <double*>p.C, p.ldc, p.accumulate, first, end, p.K, 0)
    else:
        few_rows_f(p.M, p.K, <const float*>p.A, p.a_k, <const float*>p.src, p.b_row,
                   <float*>p.C, p.ldc, p.accumulate, first, end, p.K, 0)


cdef void few_rows_halves_part(void* arg, int part, int parts) noexcept nogil:
    # grouped_few_rows: alone, both halves in turn; shared, this part's. The first half's
    # sum goes into C, the second's into its thread's buffer (p.half_sum; without the
    # memory it stays NULL, and the caller adds that half into C itself).
    cdef Product* p = <Product*>arg
    cdef size_t itemsize = sizeof(double) if p.is_f64 else sizeof(float)
    cdef void* second
    if parts == 1 or part == 0:
        few_rows_half(p, 0, p.C, p.ldc, True)
    if parts == 1 or part == 1:
        second = thread_buffer(BUFFER_HALF_SUM, p.M * p.N * itemsize)
        if second != NULL:
            few_rows_half(p, 1, second, p.N, False)
            p.half_sum = second


cdef inline void few_rows_half(const Product* p, Py_ssize_t h, void* C, Py_ssize_t ldc,
                               bint accumulate) noexcept nogil:
    # C (M x N, ldc apart) [+]= Aᵀ B over half h of every group's rows.
    cdef Py_ssize_t half = p.group // 2
    if p.is_f64:
        few_rows_d(p.M, p.K // 2, <const double*>p.A + h * half * p.a_k, p.a_k,
                   <const double*>p.src + h * half * p.b_row, p.b_row, <double*>C, ldc,
                   accumulate, 0, p.N, half, half)
    else:
        few_rows_f(p.M, p.K // 2, <const float*>p.A + h * half * p.a_k, p.a_k,
                   <const float*>p.src + h * half * p.b_row, p.b_row, <float*>C, ldc,
                   accumulate, 0, p.N, half, half)


cdef inline bint takes_few_rows(Py_ssize_t m, Py_ssize_t n, size_t itemsize) noexcept nogil:
    # Whether C (m x n) [+]= Aᵀ B goes to few_rows.
    return PANEL_KERNEL and m <= FEW_ROWS and n * itemsize >= VECTOR_BYTES


cdef void pack_part(void* arg, int part, int parts) noexcept nogil:
    cdef Product* p = <Product*>arg
    cdef Py_ssize_t first = p.panels * part // parts, end = p.panels * (part + 1) // parts
    if p.is_f64:
        panel_pack_d(p.K, p.N, <const double*>p.src, p.k_stride, p.n_stride,
                     <double*>p.packed, p.panel_stride, first, end)
    else:
        panel_pack_f(p.K, p.N, <const float*>p.src, p.k_stride, p.n_stride,
                     <float*>p.packed, p.panel_stride, first, end)


cdef size_t packed_bytes(size_t itemsize, Py_ssize_t K, Py_ssize_t N) noexcept nogil:
    if itemsize == sizeof(float):
        return panel_size_f(K, N) * sizeof(float)
    return panel_size_d(K, N) * sizeof(double)


cdef inline Py_ssize_t panel_width(bint is_f64) noexcept nogil:
    return PANEL_d if is_f64 else PANEL_f


cdef inline Py_ssize_t panel_count(bint is_f64, Py_ssize_t N) noexcept nogil:
    return (N + panel_width(is_f64) - 1) // panel_width(is_f64)


cdef void pack(Py_ssize_t K, Py_ssize_t N, const floating* src, Py_ssize_t k_stride,
               Py_ssize_t n_stride, floating* packed) noexcept nogil:
    pack_stacked(K, N, src, k_stride, n_stride, packed, 0, K)


cdef void pack_stacked(Py_ssize_t K, Py_ssize_t N, const floating* src, Py_ssize_t k_stride,
                       Py_ssize_t n_stride, floating* packed, Py_ssize_t first_k,
                       Py_ssize_t depth) noexcept nogil:
    cdef Product p
    cdef Py_ssize_t width = panel_width(floating is double)
    p.is_f64 = floating is double
    p.K, p.N, p.src, p.k_stride, p.n_stride = K, N, src, k_stride, n_stride
    p.packed, p.panel_stride = packed + first_k * width, depth * width
    p.panels = panel_count(p.is_f64, N)
    crew_run(pack_part, &p, p.panels >= 2 and K * N >= SPLIT_MIN_PACKED)


cdef void product(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                  Py_ssize_t a_row, Py_ssize_t a_k, const floating* const* a_columns,
                  const floating* panels, Py_ssize_t b_row, Py_ssize_t panel_stride,
                  floating* C, Py_ssize_t ldc, bint accumulate,
                  Py_ssize_t panel_units=0, floating* into=NULL, Py_ssize_t into_ld=0,
                  bint into_accumulate=False) noexcept nogil:
    cdef Product p
    cdef Py_ssize_t row_blocks
    if M == 0 or N == 0:
        return          # an empty C (an empty batch, or a layer without units)
    p.is_f64 = floating is double
    p.into, p.into_ld, p.into_accumulate = into, into_ld, into_accumulate
    p.M, p.N, p.K, p.a_row, p.a_k, p.ldc = M, N, K, a_row, a_k, ldc
    p.a_columns = <const void* const*>a_columns
    p.panels = panel_count(p.is_f64, N)
    p.A, p.packed, p.b_row, p.panel_stride = A, <void*>panels, b_row, panel_stride
    p.C, p.accumulate = C, accumulate
    # Units of rows where A is transposed or tall, whose blocks the kernel may gather
    # (panel_gemm): a unit of panels would gather all of A again (RNN 32,128,32,100
    # training, whose weight gradients have 22 blocks of rows: 9% slower in units of one
    # panel). A step's rows, read in place, go in units of panels; `panel_units` units of
    # them where the caller says.
    row_blocks = (M + PANEL_ROWS - 1) // PANEL_ROWS
    p.by_rows = (panel_units == 0 and ((a_k != 1 or a_columns != NULL
                                        or M >= PANEL_GATHER_ROWS) and row_blocks >= 2)
                 or p.panels < 2)
    if p.by_rows:
        p.unit = (row_blocks + PRODUCT_UNITS - 1) // PRODUCT_UNITS * PANEL_ROWS
        crew_claims_reset(&p.claims, (M + p.unit - 1) // p.unit)
    else:
        if panel_units == 0:
            panel_units = PRODUCT_UNITS
        p.unit = (p.panels + panel_units - 1) // panel_units
        crew_claims_reset(&p.claims, (p.panels + p.unit - 1) // p.unit)
    crew_run(product_part, &p, (p.panels >= 2 or M >= 2 * PANEL_ROWS)
             and M * N * K >= SPLIT_MIN_MACS)


cdef void panel_product(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                        Py_ssize_t a_row, Py_ssize_t a_k, const floating* packed,
                        floating* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    cdef Py_ssize_t width = panel_width(floating is double)
    product(M, N, K, A, a_row, a_k, NULL, packed, width, K * width, C, ldc, accumulate)


cdef const floating* packed_for_backward(Py_ssize_t K, Py_ssize_t N, const floating* src,
                                         Py_ssize_t k_stride,
                                         Py_ssize_t n_stride) noexcept nogil:
    # The pass's one packing of this operand (pack_cache.h), made on first use.
    cdef PackCache* cache = thread_pack_cache()
    cdef bint is_f64 = floating is double
    cdef floating* packed = <floating*>pack_cache_find(cache, src, K, N, k_stride, n_stride,
                                                       is_f64)
    if packed != NULL:
        return packed
    packed = <floating*>pack_cache_add(cache, src, K, N, k_stride, n_stride, is_f64,
                                       packed_bytes(sizeof(floating), K, N))
    if packed != NULL:
        pack(K, N, src, k_stride, n_stride, packed)
    return packed


cdef void forget_packed() noexcept nogil:
    pack_cache_forget(thread_pack_cache())


cdef bint has_panel_kernel() noexcept nogil:
    return PANEL_KERNEL


cdef bint wide_vectors() noexcept nogil:
    return VECTOR_BYTES >= 64


cdef bint reads_batch_in_place(Py_ssize_t rows, size_t weight_bytes) noexcept nogil:
    return PANEL_KERNEL and (rows <= FEW_BATCH_ROWS_ANY_WEIGHTS or (
        rows <= FEW_BATCH_ROWS and weight_bytes <= FEW_BATCH_THREE_PASSES_MAX_BYTES))


# For the tests: whether this build runs large products on the panels and the crew.
PANEL_KERNEL_BUILT = PANEL_KERNEL


cdef void share(crew_task task, void* arg, bint split) noexcept nogil:
    crew_run(task, arg, split)


cdef void nothing_part(void* arg, int part, int parts) noexcept nogil:
    # A task with no work: what remains of sharing it is the hand-over itself. The helper's
    # part counts itself, in a line the calling thread leaves alone until the end.
    if part == 1:
        (<int*>arg)[0] += 1


def handover_seconds(int rounds=25, int per_round=40):
    """Median seconds the crew takes to hand an empty task to its helper and see it done,
    over `rounds` rounds of `per_round` tasks; None where the helper did not take every
    task (recur on one thread, or another thread holding the crew). For bench/: a virtual
    machine may place its two vCPUs in one core complex or in two, and in two every line
    the threads pass each other costs several times more, every split step with it."""
    cdef int helper_parts
    cdef int r, i
    cdef long start
    if rounds < 1 or per_round < 1:
        raise ValueError(f"handover_seconds: rounds and per_round must be positive, "
                         f"got {rounds} and {per_round}")
    times = []
    for r in range(rounds):
        helper_parts = 0
        with nogil:
            start = crew_now_ns()
            for i in range(per_round):
                share(nothing_part, &helper_parts, True)
            start = crew_now_ns() - start
        if helper_parts != per_round:
            return None
        times.append(start * 1e-9 / per_round)
    times.sort()
    return times[len(times) // 2]


cdef extern from "fma_peak.h" nogil:
    ctypedef struct fma_peak_job:
        long rounds
        int parts
    void fma_peak_part(void* arg, int part, int parts)
    double fma_peak_flops_per_part(long rounds)


def fma_peak_flops(double seconds=0.05):
    """float32 FLOP/s of multiply-adds with nothing to load or store, on every thread the
    crew has now (fma_peak.h): a rate no float32 product reaches on these threads, whatever
    its kernel. The loop runs in three timed runs of about `seconds` / 3 each, after a short
    one that sizes them; the fastest counts. None in a build that does not target this
    CPU's vectors (RECUR_PORTABLE=1): its products run on the BLAS's kernels, which pick
    wider ones at run time. For bench/, which sets each missed target against it."""
    cdef fma_peak_job job
    cdef long elapsed
    if not seconds > 0:
        raise ValueError(f"fma_peak_flops: seconds must be positive, got {seconds!r}")
    if not PANEL_KERNEL:
        return None
    job.rounds = 1 << 14
    best = 0.0
    for run in range(4):
        with nogil:
            elapsed = crew_now_ns()
            share(fma_peak_part, &job, True)
            elapsed = max(crew_now_ns() - elapsed, 1)
        rate = fma_peak_flops_per_part(job.rounds) * job.parts / (elapsed * 1e-9)
        if run == 0:
            job.rounds = max(1 << 10, <long>(job.rounds * seconds / 3 / (elapsed * 1e-9)))
        else:
            best = max(best, rate)
    return best


cdef bint keep_alone(bint alone) noexcept nogil:
    return crew_keep_alone(alone)


cdef long now_ns() noexcept nogil:
    return crew_now_ns()


cdef Py_ssize_t balanced_split(Py_ssize_t units, Py_ssize_t least) noexcept nogil:
    return crew_balanced_split(units, least)


cdef void note_split(Py_ssize_t first, Py_ssize_t units, long ns0, long ns1) noexcept nogil:
    crew_note_split(first, units, ns0, ns1)


def helper_share():
    """The helper's share of the next task the crew divides by measured speeds."""
    return crew_share() / <double>CREW_SHARE_ONE


def pin_helper_share(share=None):
    """Pins the helper's share of the tasks the crew divides by measured speeds (a
    recurrence's batch rows, crew.h: crew_balanced_split) at `share`, a fraction in [0, 1];
    None lets it follow the measurements again, from halves. Returns the share until now.
    For the tests: the split must not change a result's bits."""
    cdef int was
    if share is None:
        was = crew_pin_share(-1)
    else:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"pin_helper_share: share must be within [0, 1], got {share!r}")
        was = crew_pin_share(<int>(share * CREW_SHARE_ONE + 0.5))
    return was / <double>CREW_SHARE_ONE


cdef void by_rows_of_c(crew_task part, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                      const floating* A, Py_ssize_t a_row, Py_ssize_t a_k, const floating* B,
                      Py_ssize_t b_row, floating* C, Py_ssize_t ldc,
                      bint accumulate, Py_ssize_t split_min_macs,
                      Py_ssize_t group, const floating* bias) noexcept nogil:
    # A product on a kernel that works a row of C at a time (few_columns_part: B is W, N x K,
    # and `bias` one per column of C, or NULL; few_inner_part: B is Bmat, K x N, no bias),
    # the crew sharing C's rows from `split_min_macs` on: each part its share of every
    # `group` rows where rows_in_groups says so.
    cdef Product p
    p.is_f64 = floating is double
    p.bias = bias
    p.M, p.N, p.K, p.A, p.a_row, p.a_k, p.src, p.b_row = M, N, K, A, a_row, a_k, B, b_row
    p.C, p.ldc, p.accumulate = C, ldc, accumulate
    p.group = group if rows_in_groups(M, group) else M
    crew_run(part, &p, M >= 2 and M * N * K >= split_min_macs)


cdef bint grouped_few_rows(bint is_f64, int M, int N, int K, const void* A, int lda,
                           const void* B, int ldb, void* C, int ldc,
                           Py_ssize_t group) noexcept nogil:
    cdef Product p
    cdef Py_ssize_t i
    if not (takes_few_rows(M, N, sizeof(double) if is_f64 else sizeof(float))
            and rows_in_groups(K, group)):
        return False
    settle_deferred(C, deferred_extent(M, N, ldc, is_f64))
    p.is_f64, p.M, p.N, p.K, p.group = is_f64, M, N, K, group
    p.A, p.a_k, p.src, p.b_row, p.C, p.ldc, p.half_sum = A, lda, B, ldb, C, ldc, NULL
    crew_run(few_rows_halves_part, &p, <double>M * N * K >= SPLIT_MIN_MACS)
    if p.half_sum == NULL:
        few_rows_half(&p, 1, C, ldc, True)
        return True
    for i in range(M):
        if is_f64:
            add_to(N, <const double*>p.half_sum + i * N, <double*>C + i * ldc)
        else:
            add_to(N, <const float*>p.half_sum + i * N, <float*>C + i * ldc)
    return True


cdef void add_to(Py_ssize_t n, const floating* src, floating* dst) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        dst[j] += src[j]


cdef void few_rows_product(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                           Py_ssize_t lda, const floating* B, Py_ssize_t ldb, floating* C,
                           Py_ssize_t ldc, bint accumulate) noexcept nogil:
    # C (M x N) [+]= Aᵀ B for A (K x M) with M <= FEW_ROWS, on few_rows: the crew sharing
    # C's columns from SPLIT_MIN_MACS on.
    cdef Product p
    p.is_f64 = floating is double
    p.M, p.N, p.K, p.A, p.a_k, p.src, p.b_row = M, N, K, A, lda, B, ldb
    p.C, p.ldc, p.accumulate = C, ldc, accumulate
    crew_run(few_rows_part, &p, N * sizeof(floating) >= 2 * VECTOR_BYTES
             and M * N * K >= SPLIT_MIN_MACS)


cdef bint transposed(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                     Py_ssize_t a_row, Py_ssize_t a_k, const floating* W, Py_ssize_t ldw,
                     floating* C, Py_ssize_t ldc, bint accumulate) noexcept nogil:
    # C [+]= A Wᵀ as (W Aᵀ)ᵀ on panel_gemm_transposed: Aᵀ packed, W read in place (A's
    # rows too where reads_batch_in_place says so, few_batch); False (nothing done) without
    # memory for the packing.
    cdef Product p
    p.A, p.a_row, p.packed = A, a_row, NULL
    if not (reads_batch_in_place(M, N * K * sizeof(floating)) and a_k == 1):
        p.packed = thread_buffer(BUFFER_PACKED, packed_bytes(sizeof(floating), K, M))
        if p.packed == NULL:
            return False
        # Aᵀ[k][m] = A[m][k]
        pack(K, M, A, a_k, a_row, <floating*>p.packed)
    p.is_f64 = floating is double
    p.M, p.N, p.K, p.ldc = M, N, K, ldc
    p.src, p.n_stride = W, ldw
    p.C, p.accumulate = C, accumulate
    p.K2, p.joined, p.bias, p.C2 = 0, N, NULL, NULL
    transposed_units(&p)
    crew_run(transposed_part, &p, N >= 2 * PANEL_ROWS and M * N * K >= SPLIT_MIN_MACS)
    return True


cdef bint gates_product(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                        Py_ssize_t lda, const floating* W, Py_ssize_t K2, const floating* A2,
                        Py_ssize_t lda2, const floating* W2, const floating* bias,
                        floating* C, Py_ssize_t ldc, Py_ssize_t joined,
                        floating* C2) noexcept nogil:
    cdef Product p
    cdef size_t first_bytes
    if not PANEL_KERNEL or M >= PANEL_GATHER_ROWS or M * N * (K + K2) <= BLAS_MAX_MACS:
        return False
    p.A, p.a_row, p.A2, p.a2_row = A, lda, A2, lda2
    p.packed = p.packed2 = NULL
    if not reads_batch_in_place(M, N * (K + K2) * sizeof(floating)):
        first_bytes = packed_bytes(sizeof(floating), K, M)
        p.packed = thread_buffer(BUFFER_PACKED,
                                 first_bytes + packed_bytes(sizeof(floating), K2, M))
        if p.packed == NULL:
            return False
        p.packed2 = <char*>p.packed + first_bytes
        pack(K, M, A, 1, lda, <floating*>p.packed)
        if K2 > 0:
            pack(K2, M, A2, 1, lda2, <floating*>p.packed2)
    p.is_f64 = floating is double
    p.M, p.N, p.K, p.ldc = M, N, K, ldc
    p.src, p.n_stride, p.K2, p.src2, p.n_stride2, p.bias = W, K, K2, W2, K2, bias
    p.joined = joined if K2 > 0 else N
    p.C, p.C2, p.accumulate = C, C2 if K2 > 0 and joined < N else NULL, False
    transposed_units(&p)
    crew_run(transposed_part, &p, transposed_rows(&p) >= 2 * PANEL_ROWS
             and M * N * (K + K2) >= SPLIT_MIN_MACS)
    return True


cdef void gemm_grouped(Py_ssize_t group, bint trans_b, int m, int n, int k,
                       const floating* a, int lda, const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil:
    product_in_groups(group, False, trans_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)


cdef void dense_product(Py_ssize_t group, int m, int n, int k, const floating* x,
                        const floating* W, const floating* bias, floating* y) noexcept nogil:
    cdef Py_ssize_t r
    if bias != NULL and few_columns_takes(False, True, n, k, sizeof(floating)):
        by_rows_of_c(few_columns_part, m, n, k, x, k, 1, W, k, y, n, False,
                     FEW_COLUMNS_SPLIT_MIN_MACS, group, bias)
        return
    # A batch of fewer rows than the panels take, on W read in place: the bias joins the
    # kernel's sums as a recurrent step's does (gates_product, with no second product).
    if bias != NULL and gates_product(m, n, k, x, k, W, 0, <const floating*>NULL, 0,
                                      <const floating*>NULL, bias, y, n, n,
                                      <floating*>NULL):
        return
    if bias != NULL:
        for r in range(m):
            memcpy(y + r * n, bias, n * sizeof(floating))
    product_in_groups(group, False, True, m, n, k, 1, x, k, W, k, 1 if bias != NULL else 0,
                      y, n)


cdef inline bint few_columns_takes(bint trans_a, bint trans_b, int n, int k,
                                   size_t itemsize) noexcept nogil:
    # Whether gemm computes C = A Wᵀ [+ C] on few_columns (by_rows_product), given alpha 1
    # and beta 0 or 1.
    return (PANEL_KERNEL and trans_b and not trans_a and n <= FEW_COLUMNS
            and k * itemsize >= VECTOR_BYTES)


cdef inline bint by_rows_product(Py_ssize_t group, bint trans_a, bint trans_b, int m, int n,
                                 int k, floating alpha, const floating* a, int lda,
                                 const floating* b, int ldb, floating beta, floating* c,
                                 int ldc) noexcept nogil:
    # The products on a kernel that works a row of C at a time (by_rows_of_c): few columns
    # (A Wᵀ) or few inner values (A Bmat). False where the product is neither.
    cdef Py_ssize_t a_row = 1 if trans_a else lda, a_k = lda if trans_a else 1
    if not (PANEL_KERNEL and alpha == 1 and (beta == 0 or beta == 1)):
        return False
    if few_columns_takes(trans_a, trans_b, n, k, sizeof(floating)):
        by_rows_of_c(few_columns_part, m, n, k, a, lda, 1, b, ldb, c, ldc, beta == 1,
                     FEW_COLUMNS_SPLIT_MIN_MACS, group, <const floating*>NULL)
        return True
    if not trans_b and takes_few_inner(n, k, sizeof(floating)):
        by_rows_of_c(few_inner_part, m, n, k, a, a_row, a_k, b, ldb, c, ldc, beta == 1,
                     SPLIT_MIN_MACS, group, <const floating*>NULL)
        return True
    return False


cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating* a, int lda, const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil:
    product_in_groups(0, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


cdef void product_in_groups(Py_ssize_t group, bint trans_a, bint trans_b, int m, int n,
                            int k, floating alpha, const floating* a, int lda,
                            const floating* b, int ldb, floating beta, floating* c,
                            int ldc) noexcept nogil:
    # gemm, with gemm_grouped's groups of A's rows (0: none).
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef floating* packed
    cdef Py_ssize_t width = panel_width(floating is double)
    cdef Py_ssize_t whole = 0, a_row = 1 if trans_a else lda, a_k = lda if trans_a else 1
    if m <= 0 or n <= 0 or (k <= 0 and beta == 1):    # C stays as it is
        return
    if by_rows_product(group, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                       ldc):
        return
    if (alpha == 1 and (beta == 0 or beta == 1) and trans_a and not trans_b
            and takes_few_rows(m, n, sizeof(floating))):
        few_rows_product(m, n, k, a, lda, b, ldb, c, ldc, beta == 1)
        return
    if (PANEL_KERNEL and alpha == 1 and (beta == 0 or beta == 1) and k > 0
            and <double>m * n * k > BLAS_MAX_MACS):
        if (trans_a and not trans_b and transposes_gradient(m, sizeof(floating))
                and gradient_as_transpose(m, n, k, a, lda, b, ldb, c, ldc, beta == 1)):
            return
        # A wider weight gradient's transposed A (Aᵀ B over every step's rows) is gathered a
        # block of rows at a time, and from 4 blocks on B pays for its packing: read in
        # place, its rows a power of two apart, a chunk of its panels shares a few cache
        # sets (Zen 3, one thread, Aᵀ B for M x 3200 x 128: M = 48 58.7 -> 73.8 GFLOP/s,
        # packing included, M = 128 55.8 -> 67.3; M = 24 53.0 -> 52.9).
        if m < PANEL_GATHER_ROWS and not (trans_a and m >= 4 * PANEL_ROWS):
            # Few rows of A meet each panel, too few to pay for packing all of B first:
            # B's whole panels are read where they are; for A Wᵀ, W is read in place and
            # only Aᵀ packed (bench/: a step of LSTM 256,1024 with W packed a few panels
            # at a time as the product reached them inferred in 57 ms, this way in 34).
            if trans_b:
                if transposed(m, n, k, a, a_row, a_k, b, ldb, c, ldc, beta == 1):
                    return
            else:
                whole = n // width * width
                if whole > 0:
                    product(m, whole, k, a, a_row, a_k, NULL, b, ldb, width, c, ldc,
                            beta == 1)
                if whole == n:
                    return
        packed = <floating*>thread_buffer(BUFFER_PACKED,
                                          packed_bytes(sizeof(floating), k, n - whole))
        if packed != NULL:
            pack(k, n - whole, b + whole * (ldb if trans_b else 1), 1 if trans_b else ldb,
                 ldb if trans_b else 1, packed)
            panel_product(m, n - whole, k, a, a_row, a_k, packed, c + whole, ldc, beta == 1)
            return
        b, c, n = b + whole * (ldb if trans_b else 1), c + whole, n - whole
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


cdef inline bint transposes_gradient(Py_ssize_t m, size_t itemsize) noexcept nogil:
    # Whether a weight gradient Aᵀ B with rows of m values in A goes as its transpose
    # (gradient_as_transpose, TRANSPOSED_GRADIENT_MAX_ROW_BYTES).
    return m > FEW_COLUMNS and m * itemsize <= TRANSPOSED_GRADIENT_MAX_ROW_BYTES


cdef bint gradient_as_transpose(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                               Py_ssize_t lda, const floating* b, Py_ssize_t ldb, floating* c,
                               Py_ssize_t ldc, bint accumulate,
                               const floating* const* b_rows=NULL) noexcept nogil:
    # C (m x n) [+]= Aᵀ B for A (k x m) and B (k x n), a weight gradient over many rows, as
    # the transpose of Bᵀ A: A's rows are already panels of Bᵀ A's right operand, read where
    # they lie, so only Bᵀ's blocks are gathered (from b_rows[k] where given, else b's rows
    # ldb apart), and neither operand is packed. The product goes to a buffer of its own,
    # n x m, and each part of it into C's columns as soon as it is done (send_transposed).
    # False (nothing done) without memory for it.
    cdef Py_ssize_t width = panel_width(floating is double), whole = m // width * width
    cdef floating* result = <floating*>thread_buffer(BUFFER_TRANSPOSED,
                                                     n * m * sizeof(floating))
    cdef floating* packed = NULL
    if result == NULL:
        return False
    if whole < m:      # A's last columns, short of a panel, packed (zero past m)
        packed = <floating*>thread_buffer(BUFFER_PACKED,
                                          packed_bytes(sizeof(floating), k, m - whole))
        if packed == NULL:
            return False
        pack(k, m - whole, a + whole, lda, 1, packed)
        product(n, m - whole, k, b, 1, ldb, b_rows, packed, width, k * width, result + whole,
                m, False, 0, c + whole * ldc, ldc, accumulate)
    if whole > 0:
        product(n, whole, k, b, 1, ldb, b_rows, a, lda, width, result, m, False,
                GRADIENT_PANEL_UNITS, c, ldc, accumulate)
    return True


cdef void gradient_of_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                           Py_ssize_t lda, const floating* const* b_rows, floating* c,
                           Py_ssize_t ldc, bint accumulate) noexcept nogil:
    # C (m x n) [+]= Aᵀ B for A (k x m, rows lda apart) and B (k x n) whose rows lie wherever
    # b_rows says: a weight gradient over rows kept in an order of their own (ops_rnn: a
    # sequence's gates part by part) against inputs in the batch's order. At once, after
    # the products running in the background into C; the paths are gemm's for Aᵀ B, with
    # B's rows gathered rather than read ldb apart.
    cdef floating* packed
    cdef Py_ssize_t j, run
    if m <= 0 or n <= 0 or k <= 0:
        return
    settle_deferred(c, deferred_extent(m, n, ldc, floating is double))
    if (PANEL_KERNEL and not takes_few_rows(m, n, sizeof(floating))
            and <double>m * n * k > BLAS_MAX_MACS):
        if (transposes_gradient(m, sizeof(floating))
                and gradient_as_transpose(m, n, k, a, lda, b_rows[0], 0, c, ldc, accumulate,
                                          b_rows)):
            return
        packed = <floating*>thread_buffer(BUFFER_PACKED, packed_bytes(sizeof(floating), k, n))
        if packed != NULL:
            pack_rows(k, n, b_rows, packed)
            panel_product(m, n, k, a, 1, lda, packed, c, ldc, accumulate)
            return
    # One product for each run of B's rows that lie end to end.
    j = 0
    while j < k:
        run = rows_end_to_end(b_rows, j, k, n)
        gemm(True, False, m, n, run, 1, a + j * lda, lda, b_rows[j], n,
             1 if accumulate or j > 0 else 0, c, ldc)
        j += run


cdef void pack_rows(Py_ssize_t K, Py_ssize_t N, const floating* const* rows,
                    floating* packed) noexcept nogil:
    # Packs B (K x N) whose rows lie wherever rows[k] says, as pack does one array: shared
    # by panels, each part packing its panels from every run of rows end to end.
    cdef Product p
    p.is_f64 = floating is double
    p.K, p.N, p.a_columns, p.packed = K, N, <const void* const*>rows, packed
    p.panel_stride = K * panel_width(p.is_f64)
    p.panels = panel_count(p.is_f64, N)
    crew_run(pack_rows_part, &p, p.panels >= 2 and K * N >= SPLIT_MIN_PACKED)


cdef void pack_rows_part(void* arg, int part, int parts) noexcept nogil:
    cdef Product* p = <Product*>arg
    cdef Py_ssize_t first = p.panels * part // parts, end = p.panels * (part + 1) // parts
    cdef Py_ssize_t width = panel_width(p.is_f64), j = 0, run
    while j < p.K:
        if p.is_f64:
            run = rows_end_to_end(<const double* const*>p.a_columns, j, p.K, p.N)
            panel_pack_d(run, p.N, (<const double* const*>p.a_columns)[j], p.N, 1,
                         <double*>p.packed + j * width, p.panel_stride, first, end)
        else:
            run = rows_end_to_end(<const float* const*>p.a_columns, j, p.K, p.N)
            panel_pack_f(run, p.N, (<const float* const*>p.a_columns)[j], p.N, 1,
                         <float*>p.packed + j * width, p.panel_stride, first, end)
        j += run


cdef inline Py_ssize_t rows_end_to_end(const floating* const* rows, Py_ssize_t first,
                                       Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    # How many rows of n values from rows[first] on lie end to end in memory.
    cdef Py_ssize_t j = first + 1
    while j < k and rows[j] == rows[j - 1] + n:
        j += 1
    return j - first


cdef int blas_int(Py_ssize_t n) except -1:
    """BLAS takes 32-bit sizes; refuse rather than wrap around."""
    if n < 0 or n > 2147483647:
        raise OverflowError(f"matrix dimension {n} does not fit a BLAS integer")
    return <int>n


# ---------------------------------------------------------------- deferred products

cdef void transposed_product(bint is_f64, int M, int N, int K, const void* A, int lda,
                             const void* B, int ldb, void* C, int ldc) noexcept nogil:
    if is_f64:
        gemm[double](True, False, M, N, K, 1, <const double*>A, lda, <const double*>B, ldb,
                     1, <double*>C, ldc)
    else:
        gemm[float](True, False, M, N, K, 1, <const float*>A, lda, <const float*>B, ldb,
                    1, <float*>C, ldc)


cdef void defer_product(bint is_f64, int M, int N, int K, const void* A, int lda,
                        const void* B, int ldb, void* C, int ldc,
                        bint background=False) noexcept nogil:
    cdef Deferrals* d = NULL
    cdef DeferredProduct* p
    cdef int i = -1
    if K <= 0 or M <= 0 or N <= 0:
        return
    # Onto a few rows of C (a head's gradient) the product at once costs no more than
    # keeping it, since neither operand gets packed (few_rows).
    if K < DEFER_DEPTH and not takes_few_rows(M, N, sizeof(double) if is_f64 else sizeof(float)):
        d = thread_deferrals()
        if d != NULL:
            i = deferred_slot(d, C, M, N, ldc, is_f64)
    if i < 0:
        settle_deferred(C, deferred_extent(M, N, ldc, is_f64))
        transposed_product(is_f64, M, N, K, A, lda, B, ldb, C, ldc)
        return
    p = deferred_product(d, i)
    p.background = background
    deferred_append(p, A, lda, B, ldb, K)
    if p.K >= DEFER_DEPTH or p.n_segments == DEFER_SEGMENTS:
        run_deferred(d, i, True)


cdef void run_deferred(Deferrals* d, int i, bint background) noexcept nogil:
    # Product i, handed to the crew's helper where it can take it (`background`), else now,
    # once the products of the same gradient running in the background are done.
    cdef DeferredProduct p
    deferred_take(d, i, &p)
    if not (background and p.background and queue_product(&p)):
        settle_deferred(p.C, extent_bytes(&p))
        run_product(&p)


cdef void run_product(const DeferredProduct* p) noexcept nogil:
    # One product over every segment: on the panels straight from the segments, else on
    # the BLAS with the segments stacked, else (without staging memory) one per segment.
    cdef const DeferredSegment* segment
    cdef void* A
    cdef void* B
    cdef int s
    if p.n_segments > 1 and PANEL_KERNEL and <double>p.M * p.N * p.K > BLAS_MAX_MACS:
        if (segments_product(p, <double*>p.C) if p.is_f64
                else segments_product(p, <float*>p.C)):
            return
    if p.n_segments > 1 and deferred_stage(p, &A, &B) == 0:
        transposed_product(p.is_f64, p.M, p.N, p.K, A, p.M, B, p.N, p.C, p.ldc)
        return
    for s in range(p.n_segments):
        segment = deferred_segment(p, s)
        transposed_product(p.is_f64, p.M, p.N, segment.K, segment.A, segment.lda, segment.B,
                           segment.ldb, p.C, p.ldc)


# ---------------------------------------------------------------- in the background
#
# A step-by-step recurrence's backward pass is a chain: each step needs the gradient the
# step after it passed back, and its products are too small to share well between two
# cores, so the helper mostly waits. The steps' weight gradients are off that chain: once
# deferred products fill up, the helper runs them (drain_queue) while the calling thread
# goes on down the chain, splitting its own steps with the helper whenever the helper is
# idle (crew.h: crew_post). The calling thread holds the crew from its first such product
# until the pass ends (flush_deferred). Before anything else writes or reads a gradient a
# queued product writes, it waits for that product (settle_deferred); before the pass
# ends, for all of them.

deferred_install_fork_handler()


cdef void drain_queue(void* arg, int part, int parts) noexcept nogil:
    # The helper's background task: every queued job, in order, until none waits. Before
    # it ends it says so and looks once more, so that a job queued meanwhile is not left.
    cdef DeferredQueue* q = deferred_queue()
    cdef long n
    while True:
        n = deferred_claim(q)
        if n < 0:
            deferred_set_draining(q, 0)
            n = deferred_claim(q)
            if n < 0:
                return
            deferred_set_draining(q, 1)
        run_job(q, n)


cdef bint queue_product(const DeferredProduct* p) noexcept nogil:
    # Queues p for the helper; False, with nothing queued, where the crew cannot be held
    # (one thread, or another caller holding it) or p is too small to be worth it.
    cdef DeferredQueue* q = deferred_queue()
    cdef long n
    cdef unsigned long spins = 0
    if (not PANEL_KERNEL or <double>p.M * p.N * p.K < SPLIT_MIN_MACS
            or not (crew_holds() or crew_hold())):
        return False
    # A slot is free only once the job DEFER_QUEUE before has finished. Jobs of one
    # gradient may wait in the queue together (run_job keeps their order). A full queue
    # means the helper is behind: while it runs that job, this thread takes the next ones
    # waiting rather than spin (GRU 32,128,32,100 stepwise training, two threads, 100
    # steps: 61 jobs in 10 passes run here so; alternate processes, Zen 4 EPYC: 8.63 ->
    # 7.94 ms; LSTM 0.981, RNN 0.985).
    n = deferred_queued(q)
    if n >= DEFER_QUEUE:
        wait_job(q, n - DEFER_QUEUE, n - 1)
    memcpy(queued_job(q, n), p, sizeof(DeferredProduct))
    deferred_publish(q)
    if deferred_draining(q):
        return True            # the helper's task takes it (drain_queue looks again)
    # Its task has ended or is ending; a task of its own if it did not take this job.
    while not crew_helper_idle():
        if deferred_draining(q):
            return True
        spins += 1
        crew_pause(spins)
    deferred_set_draining(q, 1)
    if not crew_post(drain_queue, NULL):
        deferred_set_draining(q, 0)
        wait_job(q, n, n)      # run here
    return True


cdef void run_job(DeferredQueue* q, long n) noexcept nogil:
    # Job n, claimed by this thread, once every earlier job that writes into its gradient is
    # done: the other thread may hold one, and a gradient adds its products in the order
    # they were queued, so that its sums do not depend on which thread ran what. Waiting
    # here, rather than in the calling thread before it queues a second product for one
    # gradient, let that thread go on down the steps (two threads, LSTM 32,128,32,100
    # stepwise training: 7% of all samples were that wait).
    cdef const DeferredProduct* job = queued_job(q, n)
    cdef const char* lo = <const char*>job.C
    cdef const char* hi = lo + extent_bytes(job)
    cdef unsigned long spins = 0
    cdef long k
    # Slots are reused only once their job is done, so the DEFER_QUEUE - 1 jobs before n
    # are all that can still be running.
    for k in range(max(n - DEFER_QUEUE + 1, 0), n):
        while not deferred_done(q, k) and deferred_writes(queued_job(q, k), lo, hi):
            spins += 1
            crew_pause(spins)
    run_product(job)
    deferred_mark_done(q, n)


cdef void wait_job(DeferredQueue* q, long n, long last) noexcept nogil:
    # Until job n is done; jobs up to `last` (n or later) that nobody has claimed yet run
    # here meanwhile.
    cdef long m
    cdef unsigned long spins = 0
    while not deferred_done(q, n):
        m = deferred_claim_upto(q, last)
        if m >= 0:
            run_job(q, m)
        else:
            spins += 1
            crew_pause(spins)


cdef inline size_t extent_bytes(const DeferredProduct* p) noexcept nogil:
    return deferred_extent(p.M, p.N, p.ldc, p.is_f64)


cdef void settle_deferred(const void* start, size_t nbytes) noexcept nogil:
    # Waits for the products running in the background that write bytes [start, start +
    # nbytes), running any of them not yet claimed here.
    cdef DeferredQueue* q
    cdef const DeferredProduct* job
    cdef long n, queued
    if not crew_holds():
        return
    q = deferred_queue()
    queued = deferred_queued(q)
    while q.retired < queued and deferred_done(q, q.retired):
        q.retired += 1
    for n in range(q.retired, queued):
        job = queued_job(q, n)
        if start == NULL:
            wait_job(q, n, queued - 1)     # every job: any unclaimed one runs here
        elif deferred_writes(job, <const char*>start, <const char*>start + nbytes):
            wait_job(q, n, n)


cdef bint segments_product(const DeferredProduct* p, floating* C) noexcept nogil:
    # C += Σ Aᵀ B over p's segments with none of them copied first: B's rows are packed
    # from each segment in turn, and the kernel gathers Aᵀ's blocks from the segments' rows
    # where they lie (panel_gemm.h: a_columns), as it gathers a single Aᵀ's. Stacked into one
    # array first, the segments went through memory twice (GRU 32,128,32,100 stepwise
    # training, two threads: 8% of the wall time in the calling thread's copies, the
    # helper waiting). False, with nothing done, without memory for the packing.
    cdef const floating* columns[DEFERRED_MAX_DEPTH]
    cdef const DeferredSegment* segment
    cdef Py_ssize_t width = panel_width(floating is double), k = 0, j
    cdef floating* packed
    cdef int s
    if p.K > DEFERRED_MAX_DEPTH:
        return False
    packed = <floating*>thread_buffer(BUFFER_PACKED, packed_bytes(sizeof(floating), p.K, p.N))
    if packed == NULL:
        return False
    for s in range(p.n_segments):
        segment = deferred_segment(p, s)
        pack_stacked(segment.K, p.N, <const floating*>segment.B, segment.ldb, 1, packed, k,
                     p.K)
        for j in range(segment.K):
            columns[k + j] = <const floating*>segment.A + j * segment.lda
        k += segment.K
    product(p.M, p.N, p.K, columns[0], 1, 0, columns, packed, width, p.K * width, C, p.ldc,
            True)
    return True


cdef void flush_deferred(const void* start, size_t nbytes) noexcept nogil:
    cdef Deferrals* d = thread_deferrals()
    cdef int i
    if d != NULL:
        while d.n_products > 0:
            i = 0 if start == NULL else deferred_overlapping(
                d, <const char*>start, <const char*>start + nbytes)
            if i < 0:
                break
            run_deferred(d, i, False)
    settle_deferred(start, nbytes)
    if start == NULL:
        crew_release()
