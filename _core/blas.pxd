# Row-major matrix products. Each call is one GEMM on C-contiguous (row-major) operands;
# `lda`, `ldb`, `ldc` are row strides in elements. Small products go to scipy's BLAS, large
# ones to recur's own kernel (panel_gemm.h) shared by a crew of two threads (crew.h).
from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating* a, int lda, const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil

# gemm's A Bᵀ (trans_b) or A B for an A whose rows come in groups of `group`, a sequence's
# steps of a batch's rows: where the crew shares C a row at a time (a product of few
# columns or over few inner values: a Dense head's forward and its dx), each thread takes
# its share of every group's rows rather than half of all of them, the same rows a
# recurrence shares them by (ops_rnn.pyx: forward_part), so it reads what its own core
# wrote.
# With the threads' cores far apart (a hand-over of 0.55 µs rather than 0.13), halves of
# all rows made each thread fetch half its rows from the other core (sequence inference,
# two threads, alternating processes, minimums: RNN 32,128,32,100 0.89-0.93 -> 0.82-0.85
# ms, LSTM 32,64,16,50 about 0.29 -> 0.28; cores close, and GRU 32,128 training, alike).
cdef void gemm_grouped(Py_ssize_t group, bint trans_b, int m, int n, int k,
                       const floating* a, int lda, const floating* b, int ldb,
                       floating beta, floating* c, int ldc) noexcept nogil

# A Dense layer's y = x Wᵀ + bias (bias: NULL or n values, one per column of y) for x (m x k)
# and W (n x k), x's rows in gemm_grouped's groups, all contiguous. Where the crew shares y a
# row at a time (few columns), each part adds the bias into the rows it writes; on W read in
# place (fewer rows than the panels take) the kernel adds it to its sums; elsewhere y is
# filled with the bias first, and the product adds into it.
cdef void dense_product(Py_ssize_t group, int m, int n, int k, const floating* x,
                        const floating* W, const floating* bias, floating* y) noexcept nogil

# Whether gemm computes C (m x n) = A B over an inner size k on few_inner, a row of C at a
# time (a Dense head's dx, dz W); few_inner_rows then computes C's rows on that kernel in
# the calling thread, each row the same values gemm gives it, for contiguous row-major A
# (m x k), B (k x n) and C. A sequence's backward takes its output gradient so, a step's
# rows at a time, rather than the head writing all of it (tape.pxd: GradientFactor).
cdef bint takes_few_inner(Py_ssize_t n, Py_ssize_t k, size_t itemsize) noexcept nogil

cdef void few_inner_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                         const floating* b, floating* c) noexcept nogil

cdef int blas_int(Py_ssize_t n) except -1

# Whether this build has the panel kernel (an x86 build with AVX; see panel_gemm.h). Without
# it every product goes to the BLAS and nothing below may be called.
cdef bint has_panel_kernel() noexcept nogil

# Whether this build's cores do 512-bit arithmetic. Where work is worth a second thread
# depends on how fast a core does arithmetic, which the vector width stands for; the limits
# in ops_rnn.pyx were measured on a Xeon and a Zen 5 EPYC with AVX-512 (two 512-bit FMA
# units per core) and a Zen 1 EPYC with AVX2 (one 256-bit FMA per cycle, a fifth as fast).
cdef bint wide_vectors() noexcept nogil

# Whether gates_product reads a batch of this many rows in place against weights of
# weight_bytes (few_batch): a product that streams the weights once for each 4 rows,
# whichever thread runs it.
cdef bint reads_batch_in_place(Py_ssize_t rows, size_t weight_bytes) noexcept nogil

# The recurrence's products against weights packed once per sequence: `pack` lays the
# K x N operand Bmat[k][n] = src[k * k_stride + n * n_stride] out in `packed`
# (packed_bytes(itemsize, K, N) bytes), `panel_product` computes C (M x N) [+]= A Bmat with
# A[i][k] = A[i * a_row + k * a_k].
cdef size_t packed_bytes(size_t itemsize, Py_ssize_t K, Py_ssize_t N) noexcept nogil

cdef void pack(Py_ssize_t K, Py_ssize_t N, const floating* src, Py_ssize_t k_stride,
               Py_ssize_t n_stride, floating* packed) noexcept nogil

# The same into rows [first_k, first_k + K) of panels `depth` deep, which hold several
# operands stacked along k (packed_bytes(itemsize, depth, N) bytes in all): one product then
# meets them all, as A Bmat over A's `depth` columns.
cdef void pack_stacked(Py_ssize_t K, Py_ssize_t N, const floating* src, Py_ssize_t k_stride,
                       Py_ssize_t n_stride, floating* packed, Py_ssize_t first_k,
                       Py_ssize_t depth) noexcept nogil

cdef void panel_product(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                        Py_ssize_t a_row, Py_ssize_t a_k, const floating* packed,
                        floating* C, Py_ssize_t ldc, bint accumulate) noexcept nogil

# A recurrent step's gates against weights read in place: C (M x N) = A Wᵀ + A2 W2ᵀ + bias
# for row-major A (M x K, lda), A2 (M x K2, lda2), W (N x K), W2 (N x K2) and bias (N,),
# C leaving the kernel once (a batch read in place, reads_batch_in_place, by blas.pyx's
# few_batch, sums both products and the bias before it writes C); K2 = 0 leaves out the
# second product. The second joins only C's columns below `joined` (N: all); its columns
# from `joined` on go alone into the same columns of C2 (M x N, ldc too), as the GRU's
# candidate needs h Wh_nᵀ apart. False, with nothing done, where the kernel would not take
# the products (no panel kernel, too many rows, too little work) or memory runs out.
cdef bint gates_product(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                        Py_ssize_t lda, const floating* W, Py_ssize_t K2, const floating* A2,
                        Py_ssize_t lda2, const floating* W2, const floating* bias,
                        floating* C, Py_ssize_t ldc, Py_ssize_t joined,
                        floating* C2) noexcept nogil

# Operands packed once per backward pass (pack_cache.h): the step nodes of a recurrence
# share one packing of their weights. NULL when the cache is full or memory runs out (the
# caller reads the operand in place). The tape calls forget_packed when a pass ends.
cdef const floating* packed_for_backward(Py_ssize_t K, Py_ssize_t N, const floating* src,
                                         Py_ssize_t k_stride,
                                         Py_ssize_t n_stride) noexcept nogil

cdef void gradient_of_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                           Py_ssize_t lda, const floating* const* b_rows, floating* c,
                           Py_ssize_t ldc, bint accumulate) noexcept nogil

cdef void forget_packed() noexcept nogil

# A task split between the calling thread and the crew's helper (crew.h): task(arg, part,
# parts) runs for part 0 and 1 of 2 when `split` is set and the crew is free, else once as
# part 0 of 1. Products inside a shared task run whole in their own thread.
ctypedef void (*crew_task)(void* arg, int part, int parts) noexcept nogil

cdef void share(crew_task task, void* arg, bint split) noexcept nogil

# While set, this thread's products and shared tasks run in the calling thread alone (for
# work too small to pay for moving its data between two cores); returns the previous value.
cdef bint keep_alone(bint alone) noexcept nogil

# Nanoseconds of a monotonic clock, comparable between threads.
cdef long now_ns() noexcept nogil

# A task divided up front between the calling thread and the helper, by units that cannot
# move once it runs (a recurrence's batch rows): where the helper's units begin, from the
# two cores' speeds in the last such tasks, each part keeping `least` (crew.h); and what
# the parts took, nanoseconds from the hand-over to each one's end, for the next.
cdef Py_ssize_t balanced_split(Py_ssize_t units, Py_ssize_t least) noexcept nogil
cdef void note_split(Py_ssize_t first, Py_ssize_t units, long ns0, long ns1) noexcept nogil

# dst[0, n) += src[0, n).
cdef void add_to(Py_ssize_t n, const floating* src, floating* dst) noexcept nogil

# C (M x N) += Aᵀ B over K rows that come in groups of `group`, a sequence's steps of a
# batch's rows (gemm_grouped), where C has few rows (a head's dW = dzᵀ x): the first half
# of every group's rows summed into C by the calling thread, the second half apart by the
# helper and then added, so that each thread reads the rows a recurrence's part wrote
# (ops_rnn.pyx: forward_part). Shared by C's columns instead, each thread read half of
# every row, and the other core then took those lines back to write them in the next
# forward pass. One thread sums the halves alike, in turn. False (nothing done) where the
# product is not of that kind; A (K x M) and B (K x N) are row-major, lda and ldb apart.
cdef bint grouped_few_rows(bint is_f64, int M, int N, int K, const void* A, int lda,
                           const void* B, int ldb, void* C, int ldc,
                           Py_ssize_t group) noexcept nogil

# Weight gradients of step-by-step recurrences, deferred (deferred.h): C (M x N) += Aᵀ B for
# A (K x M) and B (K x N), computed now when K is deep enough, else later in one product
# with the next steps' segments, by the crew's helper in the background where the caller
# says so and the helper is free. The operands must stay unchanged until flush_deferred
# runs for the bytes [start, start + nbytes) of C, which the tape does before any node
# reads a gradient; with start NULL, when a backward pass ends, it completes every product
# and frees the crew.
cdef void defer_product(bint is_f64, int M, int N, int K, const void* A, int lda,
                        const void* B, int ldb, void* C, int ldc,
                        bint background=*) noexcept nogil

cdef void flush_deferred(const void* start, size_t nbytes) noexcept nogil

# Waits for the deferred products running in the background (blas.pyx) that write bytes
# [start, start + nbytes): the tape calls it before a node's backward writes into its
# inputs' gradients, for each input the node does not only defer products into.
cdef void settle_deferred(const void* start, size_t nbytes) noexcept nogil
