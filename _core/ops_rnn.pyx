# Recurrent cells as fused tape nodes, forward and backward side by side.
#
# One kernel runs a whole sequence X (T, B, in); a single cell step is the case T = 1, so
# `cell(state, x)` and `m(X)` share every line below. Forward, per step: the bias, one
# product for the step's input and one for the recurrence (against weights packed once
# per sequence, blas.pxd, or once per recording for its single steps; an unrecorded
# single step, or inference over weights past 8 MB, reads them in place), one elementwise
# pass for the gates. The cells fold the three into one kernel call: on packed weights
# [x_t, h_t-1, 1] against Wi, Wh and b stacked (`stacks`), in place blas.gates_product;
# the GRU keeps its candidate's h Wh_nᵀ apart in both (GRUv3 folds none).
# Backward: per step in reverse, an elementwise pass and one product into dh; after the
# loop, whole-sequence GEMMs for dWi, dWh (against the states each step saw, h[t-1]; a
# short sequence's wait to join the next steps') and dX, and db as a column sum. A single
# step's backward products run on the one packing of its weights that every step of the
# pass shares (pack_cache.h). The two loops run over a range of batch rows, which the crew
# of two threads splits; a long sequence keeps its steps half by half for them
# (part_major), and its GEMMs and db then go a half at a time.
#
# Row-major layout, H = hidden size. Gate blocks of Wi and b: RNN [a], LSTM [i f g o],
# GRU and GRUv3 [r z n]; Wh has the same blocks except GRUv3's [r z].
#   value   Y (T, B, H); the LSTM appends c_T: (T + 1, B, H)
#   inputs  0 X, 1 h0, 2 c0, 3 Wi, 4 Wh, 5 b, 6 Wh_h   (slots a cell lacks stay -1)
#   ints    cell, act, T, B, n_in, H, h0 broadcast, c0 broadcast, panels, part-major
#   saved   [0] the node's Buffers
from libc.string cimport memcmp, memcpy, memmove, memset
from cython cimport floating
cimport numpy as cnp
import numpy as np
from recur._core.tape cimport (Node, Tape, index_t, first_write, recording_tape, constant,
                               is_tensor, value_of, tensor_value, alias, GradientFactor,
                               gradient_factor, zero_gradient)
from recur._core.blas cimport (gemm, blas_int, has_panel_kernel, packed_bytes, pack,
                               pack_stacked, panel_product, gates_product, share,
                               defer_product, gradient_of_rows, packed_for_backward,
                               keep_alone, wide_vectors, reads_batch_in_place,
                               few_inner_rows, add_to, now_ns, balanced_split,
                               note_split)
from recur._core.ops_dense cimport activate, activation_grad
from recur._core.fastmath cimport logistic_in_place, tanh_in_place
from recur._core.registry cimport OP_RNN_STEP, OP_RNN_SEQ
from recur._core.pool cimport new_array

cdef extern from "memory.h" nogil:
    int BUFFER_LAYER
    int BUFFER_STEP
    int BUFFER_HALF_SUM
    int BUFFER_OUTPUT_GRADIENT
    void* thread_buffer(int purpose, size_t nbytes)

cnp.import_array()

RNN, LSTM, GRU, GRUV3 = CELL_RNN, CELL_LSTM, CELL_GRU, CELL_GRUV3

cdef enum:
    N_INTS = 10


ctypedef struct Dims:
    int cell
    int act                # ACT_* of ops_dense.pxd (RNN only)
    index_t T, B, n_in, H
    bint h_broadcast       # h0 is unbatched (H,) against a batch of B rows
    bint c_broadcast
    bint panels            # per-step products against weights packed once (panel_gemm.h)
    bint shared_packing    # a recorded single step: its packing is the one every step of
                           #   the recording shares (recorded_packing), not its own
    bint part_major        # buffers kept for backward go part by part (Buffers, part_major)


# The working memory of one node: one block carved into named buffers, NULL where a cell
# needs none. Buffers marked [t] keep every step while recording, for backward; otherwise
# they hold one step and each step overwrites the last (their step stride is 0). Kept, they
# lie as (T, B, ·), or with d.part_major part by part: the first half of the batch's rows
# as (T, B/2, ·), then a gap, then the second half's (kept_rows).
ctypedef struct Buffers:
    void* gates            # input projections, then the activated gates [t] (G·H); RNN: Y
    void* cells            # LSTM: c_t [t]
    void* hidden           # GRU: h Wh_nᵀ [t];  GRUv3: r ⊙ h [t]
    void* hidden_proj      # GRU: h Whᵀ of the current step (B, 3H); stacked, h Wh_nᵀ (B, H)
    void* h0               # the initial h as (B, H): the input itself or its broadcast rows
    void* c0               # LSTM: the initial c, likewise
    void* d_gates          # backward: gradient of the gate pre-activations (T, B, G·H);
                           #   the LSTM's and GRU's in the memory of their gates. The GRU's
                           #   holds the gradient of h Whᵀ: its n block is d_n ⊙ r, and the
                           #   input side's d_n goes to `hidden` (gru_backward)
    void* dh               # backward: gradient reaching h_t (B, H)
    void* dc               # backward, LSTM: gradient reaching c_t (B, H)
    void* tanh_c           # backward, LSTM: tanh(c_t) of the current step (B, H)
    void* d_reset          # backward, GRUv3: gradient of r ⊙ h (B, H)
    void* d_bias           # backward, kept part by part: each half's sum of its rows'
                           #   gate gradients (G·H), the halves a gap apart (bias_part)
    void* packed_wi        # with panels: Wiᵀ, Whᵀ and Wh_hᵀ packed for the forward products,
    void* packed_wh        #   Wh and Wh_h for the backward ones; stacked (see `stacks`),
                           #   packed_wi holds Wiᵀ, Whᵀ and b as one operand (the GRU's
                           #   three: gru_packings)
    void* stage            # stacked: each row's [x_t, h_t-1, 1] (stage_h_first), the A of
                           #   that product
    void* packed_wh_h
    void* packed_wh_back
    void* packed_wh_h_back
    size_t packing_copy    # bytes from the first part's forward packings to the second's
                           #   (each part of a row split packs its own); 0: one for both
    size_t split_gap       # bytes between the parts' rows in one step's buffers (part_rows)
    size_t kept_gap        # bytes between the halves of a buffer kept part by part


cdef inline index_t input_blocks(int cell) noexcept nogil:
    return 1 if cell == CELL_RNN else 4 if cell == CELL_LSTM else 3


cdef inline index_t hidden_blocks(int cell) noexcept nogil:
    return 1 if cell == CELL_RNN else 4 if cell == CELL_LSTM else 3 if cell == CELL_GRU else 2


cdef inline bint stacks(const Dims* d) noexcept nogil:
    # Whether a step's gates come from one row of values, [x_t, h_t-1, 1] (the GRU's
    # [h_t-1, x_t, 1]: stage_h_first), against Wi, Wh and b stacked in packings made for it:
    # where input and recurrence add up before any activation (the RNN's and LSTM's gates,
    # the GRU's r and z), one packing of all three; for the GRU's candidate, x Wi_nᵀ with
    # b_n and h Wh_nᵀ apart (gru_packings). Two products over the same gates would load
    # and store them twice, and the input's, with K as short as 32, keeps the kernel from
    # its pace (Zen 5, one thread, 16 x 512: K = 32 184 GFLOP/s, K = 128 232, K = 160 235).
    # The GRU's, against a product for the input and one for the recurrence over all
    # three blocks (Zen 4 EPYC, 2 vCPUs, bench/, medians of alternate processes, copies of
    # both builds): sequence inference 32,128,32,100 2.185 -> 2.128 ms, on one thread
    # 4.37 -> 4.27, and 32,64,16,50 on one thread 0.382 -> 0.371; sequence training
    # 32,128,32,100 with the vCPUs far apart 8.47 -> 8.03.
    return d.panels and d.cell != CELL_GRUV3


cdef inline bint stage_h_first(const Dims* d) noexcept nogil:
    # The GRU's stage puts h first, so that both of its candidate's products read one
    # run of it: h alone, and x with the 1 after it.
    return d.cell == CELL_GRU


cdef inline index_t stacked_depth(const Dims* d) noexcept nogil:
    return d.n_in + d.H + 1


cdef inline index_t stage_stride(const Dims* d, size_t itemsize) noexcept nogil:
    # Values from one row of `stage` to the next: the stacked depth rounded up to whole
    # cache lines, so that the rows of a part of a row split (forward_rows), which its
    # thread writes every step, share no line with the other part's.
    cdef index_t per_line = 64 // itemsize
    return (stacked_depth(d) + per_line - 1) // per_line * per_line


cdef inline void* take(char* block, size_t* used, size_t nbytes) noexcept nogil:
    cdef void* p = NULL
    if nbytes > 0:
        if block != NULL:
            p = block + used[0]
        used[0] += (nbytes + 63) & ~(<size_t>63)     # cache-line aligned buffers
    return p


cdef size_t carve(Buffers* w, char* block, const Dims* d, bint recording, size_t itemsize,
                  void* Y, void* h0, void* c0) noexcept nogil:
    """Lays the buffers out in `block` and returns the bytes they take (measure first with
    `block` NULL). Y, h0 and c0 are the node's value and initial states."""
    cdef size_t used = 0
    cdef size_t step = itemsize * d.B * d.H
    cdef size_t kept = step * (d.T if recording else 1)
    cdef size_t all_gates = itemsize * d.T * d.B * input_blocks(d.cell) * d.H
    cdef index_t H = d.H
    cdef int cell = d.cell
    # Buffers of one step, which the parts of a row split rewrite at every step, get a
    # gap between the parts' rows (part_rows): those of a sequence, and those of an
    # inference, whose block serves the next call too. A single step's in training are
    # its own and written once.
    cdef size_t gap = SPLIT_GAP_BYTES if d.T > 1 or not recording else 0
    # The gap between the halves of a buffer kept part by part, or of one step's.
    cdef size_t kept_gap = gap if d.part_major or not recording else 0
    # A gap after the second part's rows of a buffer of one step too: the next buffer
    # begins with the first part's rows, which the second part's prefetcher fetched as it
    # streamed its own, and their writer took back, at every step (LSTM 32,64,16,50
    # inference, threads far apart, in a build timing each phase of a part's steps: the
    # first part's elementwise passes over the 50 steps 83 -> 62 µs, its stage copies 9.0
    # -> 6.8, the whole call 240 -> 227, medians of 8 and 10 processes; close, 168 -> 167
    # over 55 each). The gates, c and the GRUv3's r ⊙ h are of one step in inference only.
    cdef size_t after_one_step = 0 if recording else gap
    memset(w, 0, sizeof(Buffers))
    w.split_gap, w.kept_gap = gap, kept_gap
    # Backward reads every step's gates; inference needs only the current step's.
    w.gates = Y if cell == CELL_RNN else take(block, &used, all_gates + kept_gap if recording
                                              else itemsize * d.B * input_blocks(d.cell) * d.H
                                              + gap + after_one_step)
    # A recorded single step's c is the second half of its value, (h, c): kept there, it
    # is written once rather than into a buffer of its own and then copied.
    if recording and d.T == 1 and cell == CELL_LSTM:
        w.cells = <char*>Y + step if Y != NULL else NULL
    else:
        w.cells = take(block, &used,
                       kept + kept_gap + after_one_step if cell == CELL_LSTM else 0)
    # The GRU keeps h Wh_nᵀ for backward; GRUv3 needs r ⊙ h in inference too.
    w.hidden = take(block, &used, kept + kept_gap + after_one_step
                    if (cell == CELL_GRU and recording) or cell == CELL_GRUV3 else 0)
    # h Whᵀ of one step, in a recording too (so a gap after it always); stacked, only
    # h Wh_nᵀ, which a recording writes to `hidden`.
    w.hidden_proj = take(block, &used, 0 if cell != CELL_GRU or (stacks(d) and recording)
                         else (step if stacks(d) else 3 * step) + 2 * gap)
    w.h0 = take(block, &used, step) if d.h_broadcast else h0
    w.c0 = take(block, &used, step) if d.c_broadcast else c0
    if not d.shared_packing:
        carve_packings(w, block, &used, d, itemsize,
                       2 if parts_pack_their_own(d, recording, itemsize) else 1)
    if stacks(d):
        # Both parts stream the packed panels every step, and a hardware prefetcher runs on
        # past their end: right after them, the first part's stage was fetched by the other
        # core at every step and taken back by its writer (two threads on cores far apart,
        # LSTM 32,64,16,50 inference: the first part's steps 5.97 -> 5.41 µs, the second's
        # 4.85).
        take(block, &used, gap)
        w.stage = take(block, &used, itemsize * d.B * stage_stride(d, itemsize) + gap)
    if recording:
        # The LSTM's and the GRU's gate gradients overwrite their gates (lstm_backward,
        # gru_backward), the RNN's the gradient of its output (backward_kernel).
        w.d_gates = (w.gates if cell == CELL_LSTM or cell == CELL_GRU
                     else NULL if cell == CELL_RNN else take(block, &used,
                                                             all_gates + kept_gap))
        # Each of the backward's buffers of one step ends with the second part's rows, and
        # the next begins with the first part's: a gap after each too, or the second
        # part's thread, streaming its rows, fetched the first part's of the next buffer,
        # which their writer took back at every step (LSTM 32,64,16,50 sequence training,
        # its parts' backward timed apart: the first's 164-169 µs against the second's
        # 155-160 whichever thread ran it, 205-216 against 159-162 with the threads at 0.45
        # µs; with the gaps both 153-162. Alternate processes, threads close: the backward
        # 0.376-0.380 -> 0.368 ms; 32,128 unchanged).
        w.dh = take(block, &used, step + 2 * gap)
        w.dc = take(block, &used, step + 2 * gap if cell == CELL_LSTM else 0)
        w.tanh_c = take(block, &used, step + 2 * gap if cell == CELL_LSTM else 0)
        w.d_reset = take(block, &used, step + 2 * gap if cell == CELL_GRUV3 else 0)
        # The RNN's gate gradients go part by part only in the backward, where its output's
        # gradient is a product (backward_kernel): its halves' sums have their room too.
        w.d_bias = take(block, &used, 2 * itemsize * input_blocks(cell) * H + 2 * gap
                        if d.part_major or (cell == CELL_RNN and halves_pay(d, itemsize))
                        else 0)
        if d.panels and not d.shared_packing:
            w.packed_wh_back = take(block, &used,
                                    packed_bytes(itemsize, hidden_blocks(cell) * H, H))
            w.packed_wh_h_back = take(block, &used, packed_bytes(itemsize, H, H)
                                      if cell == CELL_GRUV3 else 0)
    return used


cdef inline bint part_major(const Dims* d, bint recording, size_t itemsize) noexcept nogil:
    # Whether a recorded sequence keeps its gates, c and h Wh_nᵀ part by part. In the (T, B, ·)
    # layout each part's rows of a step lie end to end with the other part's rows of that
    # step and the next; the other core's hardware prefetcher, streaming its own, pulled
    # them over, and their writer took them back at every step (LSTM 32,64,16,50, two
    # threads on cores far apart: a part's forward step 8.9-9.3 µs, 5.4 with each part's
    # rows its own). The halves do not depend on the thread count, so that one thread
    # (which runs them in turn) sums the gradients in the same order as two. The RNN keeps
    # only its output (its gate gradients may go part by part: backward_kernel). A shorter
    # sequence's weight gradients wait to join the next nodes' (blas.pyx: defer_product),
    # which takes their rows in one uniform layout.
    return recording and d.cell != CELL_RNN and halves_pay(d, itemsize)


cdef inline bint halves_pay(const Dims* d, size_t itemsize) noexcept nogil:
    # Whether a sequence's rows go by halves, each its own recurrence, with enough rows in
    # each for its weight gradients to run at once.
    return (d.T >= 2 and d.panels and rows_may_split(d, itemsize)
            and d.T * (d.B // 2) >= PART_MAJOR_MIN_DEPTH)


cdef inline void* bias_part(const Dims* d, const Buffers* w, index_t r0,
                            size_t itemsize) noexcept nogil:
    # The sum of gate gradients of the half from row r0 (w.d_bias): a row a half, a gap
    # apart as one step's rows are (part_rows), since each half's thread writes its own at
    # every step.
    return part_rows(w, w.d_bias, 1 if r0 > 0 else 0, input_blocks(d.cell) * d.H, itemsize)


cdef inline index_t kept_blocks(const Dims* d) noexcept nogil:
    return 2 if d.part_major else 1


cdef inline void* kept_rows(const Dims* d, const Buffers* w, void* buffer, index_t r0,
                            index_t row_values, size_t itemsize) noexcept nogil:
    # Where the rows [r0, ...) of a part begin in a buffer kept for every step: at row r0
    # of step 0, or part-major, the second half w.kept_gap bytes past the first's end
    # (carve leaves the room). Its steps then lie kept_step_rows rows apart.
    if buffer == NULL:
        return NULL
    if d.part_major:
        return <char*>buffer + r0 * d.T * row_values * itemsize + (w.kept_gap if r0 > 0
                                                                  else 0)
    return <char*>buffer + r0 * row_values * itemsize


cdef inline index_t kept_step_rows(const Dims* d, index_t rows) noexcept nogil:
    # Rows from one step to the next in a buffer kept for every step, for a part of `rows`.
    return rows if d.part_major else d.B


cdef inline index_t block_start(const Dims* d, index_t block) noexcept nogil:
    return d.B * block // kept_blocks(d)


cdef inline size_t gru_packings_bytes(const Dims* d, size_t itemsize) noexcept nogil:
    # The stacked GRU's three packings end to end in packed_wi (gru_packings).
    return (packed_bytes(itemsize, stacked_depth(d), 2 * d.H)
            + packed_bytes(itemsize, d.n_in + 1, d.H) + packed_bytes(itemsize, d.H, d.H))


cdef inline void gru_packings(const Dims* d, void* packed_wi, size_t itemsize,
                              void** rz, void** candidate_x, void** candidate_h) noexcept nogil:
    # Where the stacked GRU's packings lie in packed_wi: r and z against the whole stage
    # [h, x, 1]; the candidate's x Wi_nᵀ + b_n against its [x, 1]; its h Wh_nᵀ against h.
    rz[0] = packed_wi
    candidate_x[0] = <char*>rz[0] + packed_bytes(itemsize, stacked_depth(d), 2 * d.H)
    candidate_h[0] = <char*>candidate_x[0] + packed_bytes(itemsize, d.n_in + 1, d.H)


cdef void carve_packings(Buffers* w, char* block, size_t* used, const Dims* d,
                         size_t itemsize, int copies) noexcept nogil:
    # The forward's packed weights, from `block` on as `carve` lays out the rest; with two
    # copies, the second part's follow the first's (packing_copy).
    cdef index_t H = d.H, GH = input_blocks(d.cell) * d.H
    cdef size_t start = used[0]
    if stacks(d) and d.cell == CELL_GRU:
        w.packed_wi = take(block, used, gru_packings_bytes(d, itemsize))
    elif stacks(d):
        w.packed_wi = take(block, used, packed_bytes(itemsize, stacked_depth(d), GH))
    elif d.panels:
        w.packed_wi = take(block, used, packed_bytes(itemsize, d.n_in, GH))
        w.packed_wh = take(block, used, packed_bytes(itemsize, H, hidden_blocks(d.cell) * H))
        w.packed_wh_h = take(block, used, packed_bytes(itemsize, H, H)
                             if d.cell == CELL_GRUV3 else 0)
    w.packing_copy = used[0] - start if copies == 2 else 0
    used[0] += w.packing_copy


cdef inline bint parts_pack_their_own(const Dims* d, bint recording,
                                      size_t itemsize) noexcept nogil:
    # Whether each part of a row split packs the forward's weights into a copy of its own
    # (forward_part), measured against one packing for both (bench/, medians of
    # alternate processes, vCPUs close / far apart):
    # - inference of the LSTM and GRU at 32,64 and 32,128, where the packings take 99-330
    #   KB: 1.4-3.7% / 5-13% faster;
    # - LSTM inference at 64,256 (1.3 MB) unchanged, at 128,512 (5.2 MB) 0.8% slower close;
    # - RNN inference 32,64 3.6% / 10% faster but 32,128 1.7% / 2.8% slower, for no cause
    #   found (a gap between the copies, or shifting one by half a page, changed nothing);
    # - training: LSTM and GRU at 32,64 (99 and 74 KB) 3.8% / 3.9% faster far apart, within
    #   0.5% close (copies of both builds); LSTM and GRU at 32,128 (327 and 247 KB) lost
    #   1-2% close, and the backward's own copies of Wh gained nothing.
    # The RNN's 32,128 figures come from copies of both builds; the rest ran the source
    # tree's own files against a copy of the base's, and the same files can run 3% apart
    # by where they lie (RNN 32,128 inference in place 0.776 ms, from a copy 0.752).
    return (d.panels and d.cell != CELL_RNN
            and weight_bytes(d, itemsize) <= (TRAINING_PART_PACKING_MAX_BYTES if recording
                                              else PART_PACKING_MAX_BYTES)
            and rows_may_split(d, itemsize))


cdef enum:
    # Packing 20 MB of weights (LSTM 256,1024) costs as much as its panels then save over
    # some 8 steps against reading the weights in place, LSTM inference at 256,1024,32,T,
    # one thread / two, ms (EPYC with AVX-512, medians of alternate processes):
    #   T = 2: in place 7.5-8.3 / 3.7-4.3, packed 9.9-10.9 / 4.8-5.8
    #   T = 8: in place 28.7-30.4 / 14.7-15.7, packed 29.0-30.0 / 14.5-16.1
    #   T = 25: in place 94-96 / 47-53, packed 85-87 / 43-51; GRU 72-81 / 35-39 against
    #           61-68 / 32-35; RNN alike both ways.
    # A Xeon with AVX-512 once inferred T = 25 faster in place (LSTM 36.8 -> 30.4 ms, GRU
    # 29.2 -> 24.8, RNN 10.6 -> 9.5, each timed after a pause, from cold memory).
    INFERENCE_PACKING_MIN_STEPS = 16


cdef bint packing_pays(const Dims* d) noexcept nogil:
    # Packing costs about one step's product, so it needs a sequence to pay for itself (or
    # a recording's steps, which share one: recorded_packing).
    return d.T >= 2 and has_panel_kernel()


cdef inline void step_product(const Dims* d, index_t M, index_t N, index_t K,
                              const floating* A, index_t lda, const floating* W,
                              bint w_rows_are_n, const floating* packed, floating* C,
                              index_t ldc, bint accumulate) noexcept nogil:
    # C (M x N) [+]= A (M x K) times the weights: Wᵀ when W's rows are the N outputs
    # (forward, W is N x K), W itself when its rows are the K inputs (backward, K x N).
    if d.panels:
        panel_product(M, N, K, A, lda, 1, packed, C, ldc, accumulate)
    else:
        gemm(False, w_rows_are_n, M, N, K, 1, A, lda, W, K if w_rows_are_n else N,
             1 if accumulate else 0, C, ldc)


cdef void copy_rows(index_t rows, index_t n, const floating* row, floating* out) noexcept nogil:
    cdef index_t r
    for r in range(rows):
        memcpy(out + r * n, row, n * sizeof(floating))


# ---------------------------------------------------------------- Python entry points

def call(layer, state, x, convert, recur=None):
    """`layer(state, x)` for one of recur's cells (recur/recurrent.py): (h', y) or
    ((h', c'), y) for one step, (state_T, Y) for a sequence. The cell names its kernel
    (`kernel`), weights and activation; `convert(v, dtype)` brings an input or state that
    is not yet a C-contiguous array or a Tensor of the weights' dtype to it. Called for a
    `Recur`, its batch rule holds too: where the batches of x and the state differ, other
    than an unbatched state0 meeting a batch, `recur._check_batch(x.shape)` raises. A
    stepwise loop calls this once per step, so the common case stays in C."""
    cdef int cell = layer.kernel
    cdef int act = layer._activation() if cell == CELL_RNN else 0
    Wi, Wh, b = layer.Wi, layer.Wh, layer.b
    Wh_h = layer.Wh_h if cell == CELL_GRUV3 else None
    cdef cnp.ndarray weights = value_of(Wi)
    cdef int dtype = cnp.PyArray_TYPE(weights)
    if cell == CELL_LSTM:
        h, c = state
        c = c if in_dtype(c, dtype) else convert(c, weights.dtype)
    else:
        h, c = state, None
    h = h if in_dtype(h, dtype) else convert(h, weights.dtype)
    x = x if in_dtype(x, dtype) else convert(x, weights.dtype)
    if recur is not None and not batches_match(value_of(x), value_of(h),
                                               state is recur.state0):
        recur._check_batch((<object>value_of(x)).shape)
    if value_of(x).ndim == 3:
        Y, state = run(layer, cell, act, True, x, h, c, Wi, Wh, b, Wh_h)
        return state, Y
    state = run(layer, cell, act, False, x, h, c, Wi, Wh, b, Wh_h)
    return state, (state[0] if cell == CELL_LSTM else state)


cdef bint batches_match(cnp.ndarray x, cnp.ndarray h, bint is_state0):
    # The batch of a step (B, in) or (in,), or of a sequence (T, B, in), against the
    # state's (B, H) or (H,); other shapes are the kernel's to reject.
    cdef int x_batched = x.ndim >= 2
    if x.ndim > 3 or h.ndim > 2 or x.ndim == 0 or h.ndim == 0:
        return True
    if h.ndim == 1:
        return not x_batched or is_state0
    return x_batched and h.shape[0] == x.shape[x.ndim - 2]


cdef inline bint in_dtype(object v, int dtype):
    # A Tensor of the dtype, or a C-contiguous ndarray of it (not a subclass), aligned and
    # in this machine's byte order (PyArray_TYPE names float32 in either).
    cdef cnp.ndarray value
    if type(v) is cnp.ndarray:
        value = <cnp.ndarray>v
        return cnp.PyArray_TYPE(value) == dtype and cnp.PyArray_ISCARRAY_RO(value)
    return is_tensor(v) and cnp.PyArray_TYPE(tensor_value(v)) == dtype


cdef object run(object layer, int cell, int act, bint is_sequence, object x, object h,
                object c, object Wi, object Wh, object b, object Wh_h):
    cdef bint lstm = cell == CELL_LSTM
    cdef list objects = [x, h, c if lstm else None, Wi, Wh, b,
                         Wh_h if cell == CELL_GRUV3 else None]
    cdef list arrays = [None if o is None else value_of(o) for o in objects]
    cdef cnp.ndarray X_value = arrays[IN_X]
    cdef cnp.ndarray value
    cdef Dims d
    cdef bint batched
    cdef Tape tape
    cdef Node* node
    cdef Buffers local
    cdef Buffers* w = &local
    cdef char* block
    cdef size_t nbytes, itemsize
    cdef index_t ids[N_INPUTS]
    cdef index_t i, BH
    cdef bint recording = False
    cdef bint packs = True
    cdef size_t used
    cdef void* data[N_INPUTS]
    cdef cnp.npy_intp dims[3]
    cdef int nd

    d.cell = cell
    d.act = act
    check_weights(layer, cell, arrays, &d)
    if is_sequence:
        if X_value.ndim != 3:
            raise ValueError(f"{layer!r}: a sequence must have shape (time, batch, features), "
                             f"got shape {(<object>X_value).shape}")
        d.T, d.B, batched = X_value.shape[0], X_value.shape[1], True
    elif X_value.ndim == 1 or X_value.ndim == 2:
        batched = X_value.ndim == 2
        d.T, d.B = 1, X_value.shape[0] if batched else 1
    else:
        raise ValueError(f"{layer!r}: one step takes an input of shape (features,) or "
                         f"(batch, features), got shape {(<object>X_value).shape}; pass a "
                         "(time, batch, features) sequence to a recurrent layer")
    if X_value.shape[X_value.ndim - 1] != d.n_in:
        raise ValueError(f"{layer!r} expects {d.n_in} features in the last axis of its "
                         f"input, got shape {(<object>X_value).shape}")
    d.h_broadcast = broadcasts(layer, "h", arrays[IN_H0], &d, batched)
    d.c_broadcast = lstm and broadcasts(layer, "c", arrays[IN_C0], &d, batched)
    d.shared_packing = d.part_major = False
    d.panels = packing_pays(&d)
    check_layout(layer, arrays)
    blas_int(d.T * d.B)
    blas_int(input_blocks(cell) * d.H)
    blas_int(d.n_in)

    if is_sequence and d.T == 0:
        empty = np.empty((0, d.B, d.H), dtype=X_value.dtype)
        return constant(empty), ((h, c) if lstm else h)
    # The node's value through the C API: a stepwise loop makes one per step, and
    # np.empty's lookup and argument parsing cost more than the allocation; its memory is
    # the pool's (pool.pyx), which the loop's previous steps gave back.
    nd = 0
    if is_sequence:
        dims[0], dims[1], dims[2], nd = d.T + lstm, d.B, d.H, 3
    else:
        if lstm:
            dims[nd], nd = 2, nd + 1
        if batched:
            dims[nd], nd = d.B, nd + 1
        dims[nd], nd = d.H, nd + 1
    value = new_array(nd, dims, cnp.PyArray_TYPE(X_value))
    itemsize = X_value.itemsize
    for i in range(N_INPUTS):
        data[i] = NULL if arrays[i] is None else cnp.PyArray_DATA(<cnp.ndarray>arrays[i])

    tape = recording_tape()
    if tape is not None:
        for i in range(N_INPUTS):
            ids[i] = tape.node_of(objects[i])
            recording = recording or ids[i] >= 0
    if recording and d.T == 1 and has_panel_kernel() and weights_within_row_limit(&d, itemsize):
        # A recorded single step computes on the packing its recording's steps share
        # (recorded_packing), unless its weights are past the row split's limit: then
        # the crew splits each product by columns, streaming half the weights each, which
        # reading them in place does as well (bench/ stepwise training at 256,1024,32,25,
        # medians of alternate processes, on the shared packing against in place: LSTM
        # 119.0 -> 126.8 ms, GRU 91.4 -> 93.2, RNN 31.7 -> 32.6).
        d.shared_packing = d.panels = True
    if (not recording and weight_bytes(&d, itemsize) > ROW_SPLIT_MAX_WEIGHT_BYTES
            and d.T < INFERENCE_PACKING_MIN_STEPS):
        # Inference over weights past the row split's limit packs them only for a long
        # enough sequence, and otherwise reads them in place, step by step (blas.pxd: A Wᵀ
        # as (W Aᵀ)ᵀ, the crew splitting W's rows). Training keeps its panels, which the
        # backward's products need (LSTM there trains in 113 ms packed, 140 in place).
        d.panels = False
    d.part_major = part_major(&d, recording, itemsize)
    nbytes = carve(w, NULL, &d, recording, itemsize, NULL, NULL, NULL)
    if recording:
        w = <Buffers*>tape.meta_alloc(sizeof(Buffers))
        block = <char*>tape.scratch(nbytes)
    else:
        block = <char*>thread_buffer(BUFFER_LAYER, nbytes)   # kept for the next call
        if block == NULL:
            raise MemoryError()
    carve(w, block, &d, recording, itemsize, cnp.PyArray_DATA(value), data[IN_H0],
          data[IN_C0])
    if d.shared_packing:
        used = 0
        carve_packings(w, <char*>recorded_packing(tape, layer, &d, arrays, data, itemsize,
                                                  &packs),
                       &used, &d, itemsize, 1)
    if itemsize == sizeof(double):
        with nogil:
            recurrent_forward[double](&d, w, recording, packs, <double*>data[IN_X],
                                      <double*>data[IN_H0], <double*>data[IN_C0],
                                      <double*>data[IN_WI], <double*>data[IN_WH],
                                      <double*>data[IN_B], <double*>data[IN_WH_H],
                                      <double*>cnp.PyArray_DATA(value))
    else:
        with nogil:
            recurrent_forward[float](&d, w, recording, packs, <float*>data[IN_X],
                                     <float*>data[IN_H0], <float*>data[IN_C0],
                                     <float*>data[IN_WI], <float*>data[IN_WH],
                                     <float*>data[IN_B], <float*>data[IN_WH_H],
                                     <float*>cnp.PyArray_DATA(value))
    if recording:
        node = tape.append((OP_RNN_SEQ if is_sequence else OP_RNN_STEP) + cell, value,
                           N_INPUTS, N_INTS, 0, 1)
        for i in range(N_INPUTS):
            if arrays[i] is not None:
                tape.set_input(node, i, ids[i], arrays[i])
        node.ints[0] = d.cell; node.ints[1] = d.act; node.ints[2] = d.T; node.ints[3] = d.B
        node.ints[4] = d.n_in; node.ints[5] = d.H
        # A step's backward finds its packing elsewhere (backward_kernel): its panels
        # are a sequence's own.
        node.ints[6] = d.h_broadcast; node.ints[7] = d.c_broadcast
        node.ints[8] = d.panels and not d.shared_packing
        node.ints[9] = d.part_major
        node.saved[0] = w
        parent = tape.tensor(value, tape.n_nodes - 1)
    else:
        parent = constant(value)

    # The outputs are blocks of the node's value (alias nodes: no copies, no backward work).
    BH = d.B * d.H
    if not is_sequence:
        return (alias(parent, value[0], 0), alias(parent, value[1], BH)) if lstm else parent
    h_last = alias(parent, value[d.T - 1], (d.T - 1) * BH)
    if lstm:
        return alias(parent, value[:d.T], 0), (h_last, alias(parent, value[d.T], d.T * BH))
    return parent, h_last


# ---------------------------------------------------------------- a recording's packings

# A stepwise loop records one node per step, each a call of its own, and so each step
# read its weights in place (blas.pxd's transposed product), packing only its own rows:
# packing the weights, a pass as long as the step's product, would not pay for one step.
# The steps of one recording instead share one packing of each layer's weights, made by
# the first step in the tape's memory and found by the next ones by the recording (the
# tape's epoch) and the weights' addresses. While a recording lasts the tape keeps every
# array it saw alive, so an address names one array; only an array changed in place
# between two steps escapes that, and the forward would then have used weights the
# backward pass does not see. So before the backward pass runs, a check compares each
# packing with its weights and raises if they changed (PackingCheck).
ctypedef struct RecordedPacking:
    long epoch             # 0: free
    const void* weights[4]     # Wi, Wh, b, Wh_h
    int cell
    index_t n_in, H
    bint is_f64
    void* block            # the tape's memory, laid out by carve_packings


cdef enum:
    RECORDED_PACKINGS = 8  # layers whose packings are found at once; a ninth evicts one


# Read and written with the GIL held (run), so threads recording at once share it safely.
cdef RecordedPacking recorded_packings[RECORDED_PACKINGS]
cdef int next_recorded_packing = 0


cdef void* recorded_packing(Tape tape, object layer, const Dims* d, list arrays,
                            void** data, size_t itemsize, bint* packs) except NULL:
    # The packing this recording's steps of these weights share; *packs is set where it is
    # new, and the step's forward is to fill it.
    global next_recorded_packing
    cdef const void* weights[4]
    cdef RecordedPacking* entry
    cdef size_t nbytes = 0
    cdef Buffers layout
    cdef void* block
    cdef bint is_f64 = itemsize == sizeof(double)
    cdef int i
    weights[0], weights[1], weights[2] = data[IN_WI], data[IN_WH], data[IN_B]
    weights[3] = data[IN_WH_H]
    for i in range(RECORDED_PACKINGS):
        entry = &recorded_packings[i]
        if (entry.epoch == tape.epoch and memcmp(entry.weights, weights, sizeof(weights)) == 0
                and entry.cell == d.cell and entry.n_in == d.n_in and entry.H == d.H
                and entry.is_f64 == is_f64):
            packs[0] = False
            return entry.block
    carve_packings(&layout, NULL, &nbytes, d, itemsize, 1)
    block = tape.scratch(nbytes)
    tape.check_before_backward(PackingCheck.of(layer, d, arrays, data, itemsize, block, nbytes))
    entry = &recorded_packings[next_recorded_packing]
    next_recorded_packing = (next_recorded_packing + 1) % RECORDED_PACKINGS
    entry.epoch = tape.epoch
    memcpy(entry.weights, weights, sizeof(weights))
    entry.cell, entry.n_in, entry.H, entry.is_f64 = d.cell, d.n_in, d.H, is_f64
    entry.block = block
    packs[0] = True
    return block


cdef class PackingCheck:
    # Raises, before a backward pass, if weights changed in place after a recording's steps
    # packed them: packed again they must give the same bytes.
    cdef object layer
    cdef list arrays           # the step's arrays, weights among them, alive while this lasts
    cdef Dims d
    cdef void* data[N_INPUTS]
    cdef size_t itemsize, nbytes
    cdef const void* block

    @staticmethod
    cdef PackingCheck of(object layer, const Dims* d, list arrays, void** data,
                         size_t itemsize, const void* block, size_t nbytes):
        cdef PackingCheck check = PackingCheck.__new__(PackingCheck)
        check.layer, check.arrays, check.d = layer, arrays, d[0]
        memcpy(check.data, data, sizeof(check.data))
        check.itemsize, check.block, check.nbytes = itemsize, block, nbytes
        return check

    def __call__(self):
        cdef Buffers layout
        cdef size_t used = 0
        cdef char* again = <char*>thread_buffer(BUFFER_LAYER, self.nbytes)
        cdef bint same
        if again == NULL:
            raise MemoryError()
        carve_packings(&layout, again, &used, &self.d, self.itemsize, 1)
        with nogil:
            if self.itemsize == sizeof(double):
                pack_weights[double](&self.d, &layout, <double*>self.data[IN_WI],
                                     <double*>self.data[IN_WH], <double*>self.data[IN_B],
                                     <double*>self.data[IN_WH_H])
            else:
                pack_weights[float](&self.d, &layout, <float*>self.data[IN_WI],
                                    <float*>self.data[IN_WH], <float*>self.data[IN_B],
                                    <float*>self.data[IN_WH_H])
            same = memcmp(again, self.block, self.nbytes) == 0
        if not same:
            raise RuntimeError(
                f"{self.layer!r}: its weights changed in place while its steps were being "
                "recorded, and its forward steps used them as they were at the first; "
                "change weights outside a gradient call (between training steps)")


cdef int check_weights(object layer, int cell, list arrays, Dims* d) except -1:
    cdef cnp.ndarray Wi = arrays[IN_WI], Wh = arrays[IN_WH], b = arrays[IN_B]
    cdef cnp.ndarray Wh_h = arrays[IN_WH_H]
    cdef index_t G = input_blocks(cell), Gh = hidden_blocks(cell), H
    if Wi.ndim == 2 and Wh.ndim == 2 and b.ndim == 1:
        H = Wh.shape[1]
        if (Wi.shape[0] == G * H and Wh.shape[0] == Gh * H and b.shape[0] == G * H
                and (Wh_h is None or Wh_h.ndim == 2 and Wh_h.shape[0] == H
                     and Wh_h.shape[1] == H)):
            d.H, d.n_in = H, Wi.shape[1]
            return 0
    shapes = ", ".join(f"{name} {(<object>a).shape}" for name, a in
                       zip(("Wi", "Wh", "b", "Wh_h"), arrays[IN_WI:]) if a is not None)
    expected = f"Wi ({G}·out, in), Wh ({Gh}·out, out), b ({G}·out,)"
    raise ValueError(f"{layer!r}: its weights {shapes} do not form the cell; expected "
                     f"{expected}" + (", Wh_h (out, out)" if Wh_h is not None else ""))


cdef bint broadcasts(object layer, str name, cnp.ndarray state, const Dims* d,
                     bint batched) except -1:
    """Whether `state` is unbatched (H,) against a batch; raises if it fits no batch."""
    if state.ndim == 1 and state.shape[0] == d.H:
        return batched
    if batched and state.ndim == 2 and state.shape[0] == d.B and state.shape[1] == d.H:
        return False
    expected = f"({d.H},) or ({d.B}, {d.H})" if batched else f"({d.H},) for a single input"
    raise ValueError(f"{layer!r}: state {name} has shape {(<object>state).shape}; expected "
                     f"{expected}")


cdef int check_layout(object layer, list arrays) except -1:
    cdef cnp.ndarray a
    cdef int dtype = cnp.PyArray_TYPE(<cnp.ndarray>arrays[IN_WI])
    if dtype != cnp.NPY_FLOAT and dtype != cnp.NPY_DOUBLE:
        raise TypeError(f"{layer!r}: weights must be float32 or float64, got "
                        f"{(<object>arrays[IN_WI]).dtype}")
    for a in arrays:
        if a is None:
            continue
        if cnp.PyArray_TYPE(a) != dtype:
            raise TypeError(f"{layer!r}: inputs, states and weights must share one dtype; "
                            f"got {(<object>a).dtype} with weights of "
                            f"{(<object>arrays[IN_WI]).dtype}")
        if not cnp.PyArray_ISCARRAY_RO(a):
            raise ValueError(f"{layer!r}: arrays must be C-contiguous, aligned and in this "
                             "machine's byte order")
    return 0


# ---------------------------------------------------------------- forward

ctypedef struct StateGradient:
    # A batched state's gradient buffer (B x H), which each part of the backward writes
    # its own rows into; NULL leaves the rows in the pass's dh (dc), for backward_kernel.
    void* grad
    bint assign            # the buffer holds nothing yet (first_write): set, not add to


# Rows of a batch are independent sequences: the recurrence over rows [r0, r1) needs no
# other row. So with panels the crew splits a whole sequence by rows, forward and backward,
# one hand-over per sequence instead of one per step, and each core keeps its own rows'
# states in its own cache. A part offsets into buffers of the full batch, or where they are
# kept part by part (part_major), takes its half; one thread alone takes the halves in turn.
ctypedef struct Recurrence:
    bint is_f64
    const Dims* d
    const Buffers* w
    bint recording
    bint packs_in_parts    # forward: each part first packs the weights its steps stream
                           #   into its own copy
    const void* X
    const void* Wi
    const void* Wh
    const void* b
    const void* Wh_h
    void* Y
    Node* node             # backward only
    const void* dY
    const GradientFactor* dY_factor    # the product standing for dY, or NULL
    StateGradient h0_grad  # backward only: where each part's rows of the gradients
    StateGradient c0_grad  #   reaching h0 and c0 go
    index_t helper_row     # forward, by rows but not part_major: where the helper's rows
                           #   begin (crew.h: crew_balanced_split); 0 for halves
    long handed_ns         #   when the parts were handed out, and when each ended
    long ended_ns[2]


cdef enum:
    # Fewer rows than this per part would leave the kernel's row blocks mostly empty.
    SPLIT_MIN_ROWS = 4
    # A sequence's rows per half (T x B/2) from which its kept buffers go part by part
    # (part_major): blas.pyx's DEFER_DEPTH, the depth from which a weight gradient's
    # product runs at once rather than waiting to join others.
    PART_MAJOR_MIN_DEPTH = 256
    # Bytes between the two parts' rows in the buffers both rewrite at every step (the
    # stacked product's stage, dh, an inference's gates...). Packed end to end, the lines
    # on one side of the boundary were fetched by the other core's prefetcher as it
    # streamed its own rows, and the part writing them took them back at every step: in a
    # loop of the RNN's steps in C, two threads of 16 rows each, the second part took
    # 3.95-4.05 µs a step against the first's 3.74, and 3.74 both with the stage's parts
    # apart. On a Xeon with AVX-512 two pages were enough (bench/, medians of alternate
    # processes: LSTM 32,128,32,100 stepwise inference 3.94 -> 3.64 ms, LSTM 32,64,16,50
    # inference 0.252 -> 0.243, GRU 32,128 inference 1.84 -> 1.78; a single step's
    # buffers in training, written once, go without: there the gap cost stepwise
    # training 3%). On a Zen 4 EPYC with its two vCPUs far apart, the second part's
    # elementwise pass of a GRU step still took 2-3 times the first's, whichever thread
    # ran it; four pages evened them (GRU 32,128,32,100 stepwise inference, copies of
    # both builds alternated, far apart 3.34 -> 3.05 ms, close 2.70 -> 2.68; 8 pages and
    # 16.5 no better). Elsewhere within 1% (LSTM 32,64,16,50 inference far apart 0.306 ->
    # 0.300; its training close 0.698 -> 0.702).
    SPLIT_GAP_BYTES = 16384
    # Each part of a row split streams all the weights every step. Past this size they come
    # from L3 rather than L2 and the stream, not the arithmetic, sets the pace; the two
    # threads then do better sharing each step's product by columns, each streaming half
    # (bench/: LSTM 256,1024,32,25, 21 MB of weights, infers in 37 ms split by columns and
    # 46 by rows; 128,512,64,50, 5 MB, trains in 126 ms by rows and 142 by columns). The
    # LSTM's forward once went by columns from 2 MB, where a Zen 3 EPYC inferred 128,512
    # 7-11% faster so; on the Xeon with AVX-512, once the kernel stopped reloading its row
    # offsets (panel_gemm.h), rows won there (medians of alternate processes: inference
    # 30.8 -> 29.3 ms, training 99.1 -> 95.6).
    ROW_SPLIT_MAX_WEIGHT_BYTES = 8 << 20
    # The largest weights each part of an inference, and of a recorded sequence, packs a
    # copy of (parts_pack_their_own).
    PART_PACKING_MAX_BYTES = 512 << 10
    TRAINING_PART_PACKING_MAX_BYTES = 128 << 10
    # Below that, per row of a part: the fewer rows a part has, the fewer multiply-adds
    # each weight streamed in serves (Xeon with AVX-512, medians of alternate runs in one
    # process, by columns against by rows: RNN 256,1024,32,25 with 5.2 MB, 16 rows a part,
    # training 30.1 -> 29.0 ms and inference 10.0 -> 9.3; with 32 rows a part, 128,512,64,50,
    # RNN training (1.3 MB) 25.9 -> 28.9, GRU (3.9 MB) 81 -> 83, inference 24.5 -> 26.7).
    # A stepwise loop's single steps at 256,1024,32 gain too: training 35.6 -> 31.2 ms,
    # inference 12.3 -> 10.5.
    ROW_SPLIT_MAX_WEIGHT_BYTES_PER_ROW = 256 << 10
    # A single step (a stepwise loop's) of fewer multiply-adds runs in the calling thread
    # alone; from here on its batch rows are split like a sequence's, each part packing
    # its own rows' activations against the weights read in place (in inference; a
    # recorded step's parts share its recording's packing). Split, a step of 16
    # rows lost and one of 32 or more gained (Xeon with AVX-512, one cell's step, µs,
    # alone -> split: LSTM 32,64,16 with 393K multiply-adds 13.6 -> 18.3, GRU with 295K
    # 9.8 -> 12.0; RNN 32,128,32 with 655K 17.0 -> 13.8, GRU 38 -> 30, LSTM 55 -> 46;
    # RNN 64,256,64 93 -> 54, LSTM 373 -> 205). Splitting each of the step's products by
    # columns instead, as the crew does any other product, gained on that Xeon only from
    # 8M on: both threads then wrote every row and each read the other's on the next step.
    # Nor did a split by hidden units pay, though each part then had its units of every
    # gate and cell to itself: at B = 32, where half the rows fill only one vector of the
    # transposed kernel's lanes, the kernel alone ran faster with all the rows and half the
    # units (one thread, 16 x 160 x 512 126 GFLOP/s, 32 x 160 x 256 148-163), but the
    # parts then shared every row of h and c, and the step was no faster for the LSTM
    # (32,128,32: 32.6, 31.3, 34.2 -> 32.2, 32.0, 33.1 µs) and slower for the GRU (+4%)
    # and the RNN (9.8 -> 15.4 µs), whose product wrote its units of y in place.
    # With AVX2's slower arithmetic the split pays from smaller steps (Zen 1 EPYC, by
    # columns: RNN 32,128 stepwise inference with 655K 8.2 -> 7.4 ms).
    STEP_SPLIT_MIN_MACS_WIDE = 1 << 19
    STEP_SPLIT_MIN_MACS_NARROW = 1 << 18
    # A recorded step's parts, on its recording's packing, pack nothing of their own, and
    # the split pays from smaller steps (bench/ stepwise training, medians of alternate
    # processes, here against 1 << 19: LSTM 32,64,16,50 with 393K 2.20 -> 1.96 ms, GRU
    # with 295K 1.72 -> 1.61; at 1 << 16 the RNN's 98K steps went 0.96 -> 0.98).
    STEP_SPLIT_MIN_MACS_SHARED = 1 << 18


cdef enum:
    # The deferred weight-gradient products of a layer with at most this many bytes of
    # weights run in the crew's helper in the background, while the calling thread goes on
    # down the steps (blas.pyx: queue_product): stepwise training, two threads, RNN
    # 32,128,32,100 4.01 -> 3.28 ms, GRU 8.62 -> 7.77, LSTM 10.4 -> 9.6 (Xeon AVX-512,
    # bench/, medians of alternate processes). A larger layer's steps share their products
    # between the threads well, and its gradients keep both busy: with no limit LSTM
    # 256,1024 trained in 103 -> 113 ms, GRU 128,512 82.1 -> 84.6; with a limit on each
    # gradient instead, LSTM 64,256's small dWi went to the helper and its large dWh then
    # ran alone in the calling thread, 60.2 -> 66.6.
    BACKGROUND_MAX_WEIGHT_BYTES = 512 << 10
    # A step's backward product below this many multiply-adds stays on the BLAS in the
    # calling thread: on shared panels the step would be split between the crew, and with
    # AVX-512 the hand-over costs more than the product (bench/: RNN 32,64,16,50 stepwise
    # training 1.33 -> 1.44 ms with every step on panels). With AVX2's slower arithmetic
    # the split pays from smaller products on (EPYC, same case: 3.8 -> 3.5 ms with the
    # limit at 32768, GRU 6.8 -> 6.4).
    SHARED_PACKING_MIN_MACS_WIDE = 262144
    SHARED_PACKING_MIN_MACS_NARROW = 32768


cdef inline double step_macs(const Dims* d) noexcept nogil:
    return <double>d.B * (d.n_in + d.H) * input_blocks(d.cell) * d.H


cdef inline size_t weight_bytes(const Dims* d, size_t itemsize) noexcept nogil:
    return (d.n_in + d.H) * input_blocks(d.cell) * d.H * itemsize


cdef inline bint weights_within_row_limit(const Dims* d, size_t itemsize) noexcept nogil:
    # Whether the weights are few enough for a part of half the batch's rows (one row at
    # least) to stream them all (the limits above).
    cdef size_t limit = min(<size_t>ROW_SPLIT_MAX_WEIGHT_BYTES,
                            <size_t>max(d.B // 2, 1) * ROW_SPLIT_MAX_WEIGHT_BYTES_PER_ROW)
    return weight_bytes(d, itemsize) <= limit


cdef inline bint rows_may_split(const Dims* d, size_t itemsize) noexcept nogil:
    return d.B >= 2 * SPLIT_MIN_ROWS and weights_within_row_limit(d, itemsize)


cdef void run_recurrence(Recurrence* job, bint backward) noexcept nogil:
    # By rows where the weights are packed, and for a single step's forward, whose parts
    # each pack their own rows (blas.pxd's transposed product); a sequence reading its
    # weights in place, or over weights past the limits above, shares each step's
    # products by columns instead.
    cdef const Dims* d = job.d
    cdef bint split = ((d.panels or (d.T == 1 and not backward))
                       and rows_may_split(d, sizeof(double) if job.is_f64 else sizeof(float)))
    # A forward's parts on packed weights divide the rows by the cores' speeds, but where
    # they keep their buffers part by part (in halves, so that the weight gradients sum in
    # one order on any number of threads). There a row's values do not depend on its
    # part: the panel kernel sums each row alike in a block of any size. A single step
    # that packs its rows against weights read in place does not divide them so: a part
    # of up to FEW_BATCH_ROWS rows goes to another kernel (blas.pyx: reads_batch_in_place),
    # whose sums round differently.
    job.helper_row = 0
    if split and not backward and d.panels and not d.part_major:
        job.helper_row = balanced_split(d.B, SPLIT_MIN_ROWS)
        job.ended_ns[0] = job.ended_ns[1] = 0
        job.handed_ns = now_ns()
    share(backward_part if backward else forward_part, job, split)
    if job.helper_row > 0 and job.ended_ns[1] > 0:
        note_split(job.helper_row, d.B, job.ended_ns[0] - job.handed_ns,
                   job.ended_ns[1] - job.handed_ns)


cdef inline void* part_rows(const Buffers* w, void* buffer, index_t r0, index_t row_values,
                            size_t itemsize) noexcept nogil:
    # Where rows [r0, ...) of a part lie in a buffer of one step: the second part's
    # w.split_gap bytes past the first's end (carve leaves the room). A part that starts
    # at row 0 (the first, or the only one) begins at the buffer's start. A buffer the
    # cell lacks stays NULL.
    if buffer == NULL:
        return NULL
    return <char*>buffer + r0 * row_values * itemsize + (w.split_gap if r0 > 0 else 0)


cdef inline index_t row_blocks(const Dims* d, int parts) noexcept nogil:
    # The blocks of the batch's rows the parts run, each a recurrence of its own (part p
    # the blocks from blocks * p // parts on): the halves where buffers are kept part by
    # part, both for one part alone; otherwise one block a part.
    return kept_blocks(d) if d.part_major else parts


cdef inline void* offset_or_null(void* p, size_t nbytes) noexcept nogil:
    return NULL if p == NULL else <char*>p + nbytes


cdef void forward_part(void* arg, int part, int parts) noexcept nogil:
    cdef Recurrence* job = <Recurrence*>arg
    cdef index_t blocks = row_blocks(job.d, parts), block, r0, r1
    cdef const Buffers* w = job.w
    cdef Buffers own
    if job.packs_in_parts:
        # The panels every step of this part streams, packed by this part's thread into
        # its own copy (where parts_pack_their_own says so). Packed by one thread for
        # both, each call's writes went to lines the other core had read the call
        # before, each a trip between the cores, while the other waited (LSTM 32,64,16,50
        # inference, vCPUs close / far apart: 0.269 -> 0.259 / 0.350 -> 0.305 ms).
        own = job.w[0]
        if part == 1:
            own.packed_wi = offset_or_null(own.packed_wi, own.packing_copy)
            own.packed_wh = offset_or_null(own.packed_wh, own.packing_copy)
            own.packed_wh_h = offset_or_null(own.packed_wh_h, own.packing_copy)
        if job.is_f64:
            pack_weights[double](job.d, &own, <const double*>job.Wi, <const double*>job.Wh,
                                 <const double*>job.b, <const double*>job.Wh_h)
        else:
            pack_weights[float](job.d, &own, <const float*>job.Wi, <const float*>job.Wh,
                                <const float*>job.b, <const float*>job.Wh_h)
        w = &own
    for block in range(blocks * part // parts, blocks * (part + 1) // parts):
        r0, r1 = job.d.B * block // blocks, job.d.B * (block + 1) // blocks
        if parts == 2 and job.helper_row > 0:
            r0 = 0 if part == 0 else job.helper_row
            r1 = job.helper_row if part == 0 else job.d.B
        if job.is_f64:
            forward_rows[double](job.d, w, job.recording, <const double*>job.X,
                                 <const double*>job.Wi, <const double*>job.Wh,
                                 <const double*>job.b, <const double*>job.Wh_h,
                                 <double*>job.Y, r0, r1)
        else:
            forward_rows[float](job.d, w, job.recording, <const float*>job.X,
                                <const float*>job.Wi, <const float*>job.Wh,
                                <const float*>job.b, <const float*>job.Wh_h, <float*>job.Y,
                                r0, r1)
    if parts == 2 and job.helper_row > 0:
        job.ended_ns[part] = now_ns()


cdef void pack_weights(const Dims* d, const Buffers* w, const floating* Wi,
                       const floating* Wh, const floating* b,
                       const floating* Wh_h) noexcept nogil:
    # The forward's packings, into the buffers carve_packings laid out.
    cdef index_t H = d.H, GH = input_blocks(d.cell) * d.H, depth = stacked_depth(d)
    cdef void* rz
    cdef void* candidate_x
    cdef void* candidate_h
    if stacks(d) and d.cell == CELL_GRU:
        gru_packings(d, w.packed_wi, sizeof(floating), &rz, &candidate_x, &candidate_h)
        pack_stacked(H, 2 * H, Wh, 1, H, <floating*>rz, 0, depth)
        pack_stacked(d.n_in, 2 * H, Wi, 1, d.n_in, <floating*>rz, H, depth)
        pack_stacked(1, 2 * H, b, 2 * H, 1, <floating*>rz, H + d.n_in, depth)
        pack_stacked(d.n_in, H, Wi + 2 * H * d.n_in, 1, d.n_in, <floating*>candidate_x, 0,
                     d.n_in + 1)
        pack_stacked(1, H, b + 2 * H, H, 1, <floating*>candidate_x, d.n_in, d.n_in + 1)
        pack(H, H, Wh + 2 * H * H, 1, H, <floating*>candidate_h)
    elif stacks(d):
        pack_stacked(d.n_in, GH, Wi, 1, d.n_in, <floating*>w.packed_wi, 0, depth)
        pack_stacked(H, GH, Wh, 1, H, <floating*>w.packed_wi, d.n_in, depth)
        pack_stacked(1, GH, b, GH, 1, <floating*>w.packed_wi, d.n_in + H, depth)
    elif d.panels:
        pack(d.n_in, GH, Wi, 1, d.n_in, <floating*>w.packed_wi)
        pack(H, hidden_blocks(d.cell) * H, Wh, 1, H, <floating*>w.packed_wh)
        if d.cell == CELL_GRUV3:
            pack(H, H, Wh_h, 1, H, <floating*>w.packed_wh_h)


cdef void recurrent_forward(const Dims* d, const Buffers* w, bint recording, bint packs,
                            const floating* X, const floating* h0, const floating* c0,
                            const floating* Wi, const floating* Wh, const floating* b,
                            const floating* Wh_h, floating* Y) noexcept nogil:
    # `packs`: whether the weights are to be packed first (not when a recording's earlier
    # step packed them already).
    cdef index_t T = d.T, B = d.B, H = d.H
    cdef Recurrence job
    job.packs_in_parts = packs and w.packing_copy != 0
    if packs and not job.packs_in_parts:
        pack_weights(d, w, Wi, Wh, b, Wh_h)
    if d.h_broadcast:
        copy_rows(B, H, h0, <floating*>w.h0)
    if d.c_broadcast:
        copy_rows(B, H, c0, <floating*>w.c0)
    cdef bint was_alone
    job.is_f64 = floating is double
    job.d, job.w, job.recording = d, w, recording
    job.X, job.Wi, job.Wh, job.b, job.Wh_h, job.Y = X, Wi, Wh, b, Wh_h, Y
    # A small step keeps to this thread (STEP_SPLIT_MIN_MACS_*), but for a batch read in
    # place (reads_batch_in_place): its product streams the weights for a few
    # multiply-adds a value, and with W's rows shared each core streams half, which stays
    # in its cache from one step to the next (Zen 4, 2 vCPUs, bench/'s steps outside its
    # configs, medians of alternate processes, ms: stepwise inference at batch 1, LSTM
    # 64,200 1.89 -> 1.10, GRU 1.46 -> 0.87; LSTM training 4.1 -> 3.1; 8,32,1,50, on the
    # BLAS, as it was).
    if T == 1 and not reads_batch_in_place(B, weight_bytes(d, sizeof(floating))) and (
            step_macs(d) < (STEP_SPLIT_MIN_MACS_SHARED if d.shared_packing
                            else STEP_SPLIT_MIN_MACS_WIDE if wide_vectors()
                            else STEP_SPLIT_MIN_MACS_NARROW)):
        was_alone = keep_alone(True)
        run_recurrence(&job, False)
        keep_alone(was_alone)
    else:
        run_recurrence(&job, False)


cdef void forward_rows(const Dims* d, const Buffers* w, bint recording, const floating* X,
                       const floating* Wi, const floating* Wh, const floating* b,
                       const floating* Wh_h, floating* Y, index_t r0,
                       index_t r1) noexcept nogil:
    cdef index_t T = d.T, B = d.B, H = d.H, BH = d.B * d.H, rows = r1 - r0
    cdef index_t GH = input_blocks(d.cell) * H, step_rows = kept_step_rows(d, rows)
    cdef index_t kept_stride = step_rows * H if recording else 0
    cdef index_t gates_stride = step_rows * GH if recording or d.cell == CELL_RNN else 0
    cdef size_t itemsize = sizeof(floating)
    # Buffers kept for backward (and the RNN's, Y) as kept_rows lays them; one step's apart.
    cdef floating* gates = <floating*>(
        part_rows(w, w.gates, r0, GH, itemsize) if gates_stride == 0
        else kept_rows(d, w, w.gates, r0, GH, itemsize))
    cdef floating* cells = <floating*>(kept_rows(d, w, w.cells, r0, H, itemsize) if recording
                                       else part_rows(w, w.cells, r0, H, itemsize))
    cdef floating* hidden = <floating*>(kept_rows(d, w, w.hidden, r0, H, itemsize)
                                        if recording
                                        else part_rows(w, w.hidden, r0, H, itemsize))
    cdef bint stacked = stacks(d)
    cdef floating* hidden_proj = <floating*>part_rows(w, w.hidden_proj, r0,
                                                      H if stacked else 3 * H, itemsize)
    cdef index_t depth = stacked_depth(d), stride = stage_stride(d, sizeof(floating))
    cdef floating* stage = <floating*>part_rows(w, w.stage, r0, stride, itemsize)
    # A recorded step's h Whᵀ lives only until its activations (stacked, the GRU keeps its
    # part in `hidden` at once), and its stage only until its product: in this thread's
    # one reused buffer they stay in cache, where the node's own, carved fresh for every
    # step of a stepwise pass, were a trip to memory and back. (Without the memory, the
    # node's own.)
    cdef size_t own_proj = (rows * 3 * H * itemsize if recording and T == 1
                            and hidden_proj != NULL and not stacked else 0)
    cdef size_t own_stage = rows * stride * itemsize if stacked and d.shared_packing else 0
    cdef char* own = NULL
    if own_proj + own_stage > 0:
        own = <char*>thread_buffer(BUFFER_STEP, own_stage + own_proj)
    if own != NULL:
        if own_stage > 0:
            stage = <floating*>own
        if own_proj > 0:
            hidden_proj = <floating*>(own + own_stage)
    cdef const floating* h_prev = <floating*>w.h0 + r0 * H
    cdef const floating* c_prev = <floating*>w.c0 + r0 * H
    cdef const floating* pwh = <floating*>w.packed_wh
    cdef const floating* pwh_h = <floating*>w.packed_wh_h
    cdef floating* gates_t
    cdef floating* y_t
    cdef index_t t, r
    # Whether the recurrence's product joins the input's on every gate (the GRUs keep h Whᵀ
    # apart, but for the GRU's r and z, stacked or on weights read in place).
    cdef bint adds_recurrence = d.cell == CELL_RNN or d.cell == CELL_LSTM
    cdef bint fused
    cdef const floating* late_bias     # GRU: b, where the gates do not hold it yet
    # The stage's x and h: [x, h, 1], or the GRU's [h, x, 1].
    cdef index_t x_at = H if stage_h_first(d) else 0
    cdef index_t h_at = 0 if stage_h_first(d) else d.n_in
    cdef void* gru_rz
    cdef floating* candidate_t = NULL     # the stacked GRU's h Wh_nᵀ this step
    cdef void* gru_candidate_x
    cdef void* gru_candidate_h
    if stacked and d.cell == CELL_GRU:
        gru_packings(d, w.packed_wi, itemsize, &gru_rz, &gru_candidate_x, &gru_candidate_h)
    X += r0 * d.n_in
    Y += r0 * H
    if stacked:
        for r in range(rows):
            stage[r * stride + depth - 1] = 1
    for t in range(T):
        gates_t = gates + t * gates_stride
        y_t = Y + t * BH
        if stacked:
            # The step's pre-activations, bias included, in one product.
            for r in range(rows):
                memcpy(stage + r * stride + x_at, X + (t * B + r) * d.n_in,
                       d.n_in * sizeof(floating))
                memcpy(stage + r * stride + h_at, h_prev + r * H, H * sizeof(floating))
            if d.cell == CELL_GRU:
                # r and z whole; the candidate's x Wi_nᵀ + b_n into its gates, and its
                # h Wh_nᵀ apart, where backward keeps it (or, in inference, into
                # hidden_proj), for the elementwise pass.
                candidate_t = hidden + t * kept_stride if recording else hidden_proj
                panel_product(rows, 2 * H, depth, stage, stride, 1, <floating*>gru_rz,
                              gates_t, GH, False)
                panel_product(rows, H, d.n_in + 1, stage + x_at, stride, 1,
                              <floating*>gru_candidate_x, gates_t + 2 * H, GH, False)
                panel_product(rows, H, H, stage + h_at, stride, 1,
                              <floating*>gru_candidate_h, candidate_t, H, False)
            else:
                panel_product(rows, GH, depth, stage, stride, 1, <floating*>w.packed_wi,
                              y_t if d.cell == CELL_RNN else gates_t, GH, False)
        # Likewise on weights read in place (an unrecorded single step): the products
        # and the bias meet in the kernel, and the gates are written once. The GRU's r and
        # z join h Whᵀ there too, and its h Wh_nᵀ goes apart into hidden_proj: a product
        # of its own over all three blocks was one pass more over the gates' rows, and the
        # input's, with K as short as 32, kept the kernel from its pace (Zen 4 EPYC, one
        # thread, half a 32,128 step: 16 x 32 x 384 and 16 x 128 x 384 in 5.84 and
        # 16.12 µs, 16 x 160 x 256, 16 x 32 x 128 and 16 x 128 x 128 in 13.16, 2.01, 5.57;
        # bench/ stepwise inference, medians of alternate processes: 32,128 5.46 -> 5.20 ms
        # on one thread, 3.15 -> 2.91 on two; 64,256 and 128,512 5% faster).
        fused = stacked or (not d.panels and gates_product(
            rows, GH, d.n_in, X + t * B * d.n_in, d.n_in, Wi,
            H if adds_recurrence or d.cell == CELL_GRU else 0, h_prev, H, Wh, b,
            y_t if d.cell == CELL_RNN else gates_t, GH,
            2 * H if d.cell == CELL_GRU else GH, hidden_proj))
        late_bias = NULL
        if not fused:
            # Each step's input projection on top of the bias, just before the step needs
            # it: the gates stay in cache from here to the activations (projecting all
            # steps in one GEMM first sent T steps of gates through memory and back). The
            # GRU's elementwise pass adds the bias as it adds h Whᵀ, which spares a pass
            # writing it into the gates first.
            if d.cell != CELL_GRU:
                copy_rows(rows, GH, b, gates_t)
            else:
                late_bias = b
            step_product(d, rows, GH, d.n_in, X + t * B * d.n_in, d.n_in, Wi, True,
                         <floating*>w.packed_wi, gates_t, GH, d.cell != CELL_GRU)
        if d.cell == CELL_RNN:          # the gates are y_t itself
            if not fused:
                step_product(d, rows, H, H, h_prev, H, Wh, True, pwh, y_t, H, True)
            activate(d.act, rows * H, y_t)
        elif d.cell == CELL_LSTM:
            if not fused:
                step_product(d, rows, 4 * H, H, h_prev, H, Wh, True, pwh, gates_t, 4 * H,
                             True)
            step_elementwise(d, rows, gates_t, NULL, NULL, 0, NULL, c_prev,
                             cells + t * kept_stride,
                             y_t, NULL, False)
            c_prev = cells + t * kept_stride
        elif d.cell == CELL_GRU:
            if not fused:
                step_product(d, rows, 3 * H, H, h_prev, H, Wh, True, pwh, hidden_proj,
                             3 * H, False)
            step_elementwise(d, rows, gates_t, hidden_proj,
                             candidate_t if stacked else hidden_proj + 2 * H,
                             H if stacked else 3 * H, h_prev, NULL,
                             hidden + t * kept_stride if recording else NULL, y_t,
                             late_bias, fused)
        else:
            step_product(d, rows, 2 * H, H, h_prev, H, Wh, True, pwh, gates_t, 3 * H, True)
            gruv3_reset_forward(rows, H, gates_t, h_prev, hidden + t * kept_stride)
            step_product(d, rows, H, H, hidden + t * kept_stride, H, Wh_h, True, pwh_h,
                         gates_t + 2 * H, 3 * H, True)
            gruv3_output_forward(rows, H, gates_t, h_prev, y_t)
        h_prev = y_t
    if d.cell == CELL_LSTM and Y + T * BH != c_prev:        # c_T after the outputs
        memcpy(Y + T * BH, c_prev, rows * H * sizeof(floating))


# A step's elementwise pass over its rows, forward or backward, split between the crew's
# two threads when the step was not split already (a single step, or a sequence whose
# products the crew splits by columns) and the pass is large enough to pay for the
# hand-over; otherwise the helper waits through it. Rows are independent, so the parts
# give the serial result. bench/, stepwise inference, A/B in alternate processes: LSTM
# 128,512 36.9-37.6 -> 33.4-35.5 ms, GRU 64,256 18.1 -> 16.7-17.9. (The RNN's one
# activation forward is too cheap to share: it stays in forward_rows.)
ctypedef struct StepElementwise:
    bint is_f64
    bint backward
    const Dims* d
    index_t rows
    void* gates                # forward: the step's gates, for the GRU its input projection
    const void* hidden_proj    # forward, GRU: h Whᵀ (B, 3H), where r and z lack it (joined:
                               #   unread, and NULL where the stacked step keeps none)
    const void* candidate_proj # forward, GRU: h Wh_nᵀ, its rows candidate_ld apart
    index_t candidate_ld
    const void* h_prev         # GRU
    const void* c_prev         # LSTM
    void* kept                 # LSTM: c; GRU: h Wh_nᵀ (written forward, read backward,
                               #   where d_n replaces it; NULL in inference)
    const void* bias           # forward, GRU: b where the gates lack it, else NULL
    bint joined                # forward, GRU: r and z hold h Whᵀ already, and b with them
    void* y                    # the step's output (read backward by the RNN)
    const void* dY             # backward: the step's output gradient
    void* tanh_c               # backward, LSTM: scratch
    void* dh                   # backward
    void* dc                   # backward, LSTM
    void* d_gates              # backward (LSTM, GRU: the gates, replaced by their gradients)


cdef enum:
    # Values (rows x H) below which a step's elementwise pass stays in one thread. With
    # AVX2 the activations cost about five times more per value than with AVX-512, so
    # smaller passes pay for the hand-over (EPYC, stepwise inference: LSTM 32,128
    # 18.5 -> 17.0 ms and GRU 15.7 -> 13.7 at 2048; at 1024 GRU 32,64 went 3.2 -> 3.4).
    ELEMENTWISE_SPLIT_MIN_WIDE = 16384
    ELEMENTWISE_SPLIT_MIN_NARROW = 2048


cdef inline bint elementwise_pays(const Dims* d, index_t rows) noexcept nogil:
    # Whether a step's elementwise pass, forward or backward, is worth a hand-over.
    return rows >= 2 and rows * d.H >= (ELEMENTWISE_SPLIT_MIN_WIDE if wide_vectors()
                                        else ELEMENTWISE_SPLIT_MIN_NARROW)


cdef void step_elementwise(const Dims* d, index_t rows, floating* gates,
                           const floating* hidden_proj, const floating* candidate_proj,
                           index_t candidate_ld, const floating* h_prev,
                           const floating* c_prev, floating* kept, floating* y,
                           const floating* bias, bint joined) noexcept nogil:
    cdef StepElementwise job
    job.is_f64, job.backward = floating is double, False
    job.d, job.rows, job.gates, job.hidden_proj = d, rows, gates, hidden_proj
    job.candidate_proj, job.candidate_ld = candidate_proj, candidate_ld
    job.h_prev, job.c_prev, job.kept, job.y, job.bias = h_prev, c_prev, kept, y, bias
    job.joined = joined
    share(elementwise_part, &job, elementwise_pays(d, rows))


cdef void elementwise_part(void* arg, int part, int parts) noexcept nogil:
    cdef StepElementwise* job = <StepElementwise*>arg
    cdef index_t r0 = job.rows * part // parts, r1 = job.rows * (part + 1) // parts
    if job.is_f64:
        elementwise_rows(job, <double*>job.y, r0, r1)
    else:
        elementwise_rows(job, <float*>job.y, r0, r1)


cdef void elementwise_rows(const StepElementwise* job, floating* y, index_t r0,
                           index_t r1) noexcept nogil:
    if job.backward:
        backward_elementwise_rows(job, y, r0, r1)
        return
    cdef const Dims* d = job.d
    cdef index_t H = d.H, rows = r1 - r0, GH = input_blocks(d.cell) * d.H
    y += r0 * H
    if d.cell == CELL_LSTM:
        lstm_forward(rows, H, <floating*>job.gates + r0 * GH,
                     <const floating*>job.c_prev + r0 * H, <floating*>job.kept + r0 * H, y)
    else:
        gru_forward(rows, H, <floating*>job.gates + r0 * GH,
                    NULL if job.joined else <const floating*>job.hidden_proj + r0 * 3 * H,
                    <const floating*>job.candidate_proj + r0 * job.candidate_ld,
                    job.candidate_ld, <const floating*>job.h_prev + r0 * H,
                    <floating*>job.kept + r0 * H if job.kept != NULL else NULL, y,
                    <const floating*>job.bias, job.joined)


cdef void lstm_forward(index_t B, index_t H, floating* gates, const floating* c_prev,
                       floating* c, floating* h) noexcept nogil:
    # c' = s(f) c + s(i) tanh(g),  h' = s(o) tanh(c'); activated gates replace their inputs.
    cdef index_t r, j
    cdef floating* i_gate
    cdef floating* f_gate
    cdef floating* candidate
    cdef floating* o_gate
    cdef floating* c_row
    cdef floating* h_row
    cdef const floating* c_prev_row
    for r in range(B):
        i_gate = gates + r * 4 * H
        f_gate, candidate, o_gate = i_gate + H, i_gate + 2 * H, i_gate + 3 * H
        c_row, h_row, c_prev_row = c + r * H, h + r * H, c_prev + r * H
        logistic_in_place(2 * H, i_gate)
        tanh_in_place(H, candidate)
        logistic_in_place(H, o_gate)
        for j in range(H):
            c_row[j] = f_gate[j] * c_prev_row[j] + i_gate[j] * candidate[j]
        memcpy(h_row, c_row, H * sizeof(floating))
        tanh_in_place(H, h_row)
        for j in range(H):
            h_row[j] *= o_gate[j]


cdef void gru_forward(index_t B, index_t H, floating* gates, const floating* hidden_proj,
                      const floating* candidate_proj, index_t candidate_ld,
                      const floating* h_prev, floating* hidden_n, floating* h,
                      const floating* bias, bint joined) noexcept nogil:
    # r, z = s(x part + b + h part),  n = tanh(x Wi_nᵀ + b_n + r ⊙ (h Wh_nᵀ)),
    # h' = (1 - z) n + z h = n + z (h - n), with b already in the gates where `bias` is
    # NULL, and with `joined` the h part of r and z too (hidden_proj then unread). h Wh_nᵀ
    # comes from candidate_proj, and backward needs it: copied to hidden_n (unless NULL,
    # or already there).
    cdef index_t r, j
    cdef floating* reset
    cdef floating* update
    cdef floating* candidate
    cdef const floating* p
    cdef const floating* p_candidate
    cdef const floating* b_candidate
    for r in range(B):
        reset = gates + r * 3 * H
        update, candidate = reset + H, reset + 2 * H
        p_candidate = candidate_proj + r * candidate_ld
        if not joined:
            p = hidden_proj + r * 3 * H
            if bias != NULL:
                for j in range(2 * H):
                    reset[j] += bias[j] + p[j]
            else:
                for j in range(2 * H):
                    reset[j] += p[j]
        logistic_in_place(2 * H, reset)
        if hidden_n != NULL and hidden_n + r * H != p_candidate:
            memcpy(hidden_n + r * H, p_candidate, H * sizeof(floating))
        if bias != NULL:
            b_candidate = bias + 2 * H
            for j in range(H):
                candidate[j] += b_candidate[j] + reset[j] * p_candidate[j]
        else:
            for j in range(H):
                candidate[j] += reset[j] * p_candidate[j]
        tanh_in_place(H, candidate)
        for j in range(H):
            h[r * H + j] = candidate[j] + update[j] * (h_prev[r * H + j] - candidate[j])


cdef void gruv3_reset_forward(index_t B, index_t H, floating* gates, const floating* h_prev,
                              floating* reset_h) noexcept nogil:
    # r, z = s(·); r ⊙ h is the input of the candidate's own matrix Wh_h.
    cdef index_t r, j
    cdef floating* reset
    for r in range(B):
        reset = gates + r * 3 * H
        logistic_in_place(2 * H, reset)
        for j in range(H):
            reset_h[r * H + j] = reset[j] * h_prev[r * H + j]


cdef void gruv3_output_forward(index_t B, index_t H, floating* gates, const floating* h_prev,
                               floating* h) noexcept nogil:
    # n = tanh(x Wi_nᵀ + b_n + (r ⊙ h) Wh_hᵀ),  h' = (1 - z) n + z h = n + z (h - n).
    cdef index_t r, j
    cdef floating* update
    cdef floating* candidate
    for r in range(B):
        update = gates + r * 3 * H + H
        candidate = update + H
        tanh_in_place(H, candidate)
        for j in range(H):
            h[r * H + j] = candidate[j] + update[j] * (h_prev[r * H + j] - candidate[j])


# ---------------------------------------------------------------- backward

cdef void recurrent_backward(Node* node, Node* nodes) noexcept nogil:
    if node.is_f64:
        backward_kernel[double](node, nodes, <double*>node.grad)
    else:
        backward_kernel[float](node, nodes, <float*>node.grad)


cdef bint reads_output_factor(const Node* node, const GradientFactor* factor) noexcept nogil:
    # A sequence's output gradient as a product over its rows, step by step (T x B rows of
    # H): backward_rows computes each step's rows where it needs them.
    return factor.cols == node.ints[5] and factor.rows == node.ints[2] * node.ints[3]


cdef Dims dims_of(const Node* node) noexcept nogil:
    cdef Dims d
    d.cell = <int>node.ints[0]
    d.act = <int>node.ints[1]
    d.T, d.B, d.n_in, d.H = node.ints[2], node.ints[3], node.ints[4], node.ints[5]
    d.h_broadcast, d.c_broadcast, d.panels = node.ints[6], node.ints[7], node.ints[8]
    d.shared_packing = False
    d.part_major = node.ints[9]
    return d


cdef void backward_part(void* arg, int part, int parts) noexcept nogil:
    cdef Recurrence* job = <Recurrence*>arg
    cdef index_t blocks = row_blocks(job.d, parts), block, r0, r1
    for block in range(blocks * part // parts, blocks * (part + 1) // parts):
        r0, r1 = job.d.B * block // blocks, job.d.B * (block + 1) // blocks
        if job.is_f64:
            backward_rows[double](job.node, job.d, job.w, <const double*>job.dY,
                                  job.dY_factor, &job.h0_grad, &job.c0_grad, r0, r1)
        else:
            backward_rows[float](job.node, job.d, job.w, <const float*>job.dY,
                                 job.dY_factor, &job.h0_grad, &job.c0_grad, r0, r1)


cdef void backward_rows(const Node* node, const Dims* d, const Buffers* w, const floating* dY,
                        const GradientFactor* dY_factor, const StateGradient* h0_grad,
                        const StateGradient* c0_grad, index_t r0, index_t r1) noexcept nogil:
    # The reverse loop over rows [r0, r1): per step the cell's backward into d_gates and
    # the gradient reaching h_{t-1} into dh (dc for the LSTM's c). With dY_factor, each
    # step's rows of dY are computed from it just before they are needed, into a buffer
    # that stays in this core's cache (or into dY's own place without the memory).
    cdef index_t T = d.T, B = d.B, H = d.H, BH = d.B * d.H, rows = r1 - r0
    cdef index_t GH = input_blocks(d.cell) * H, hidden_GH = hidden_blocks(d.cell) * H
    cdef const floating* Wh = <floating*>node.in_values[IN_WH]
    cdef const floating* Wh_h = <floating*>node.in_values[IN_WH_H]
    cdef size_t itemsize = sizeof(floating)
    cdef const floating* Y = <floating*>node.value + r0 * H
    # Kept buffers' steps lie `step_rows` rows apart (kept_rows), Y's and dY's B.
    cdef index_t step_rows = kept_step_rows(d, rows)
    cdef index_t gates_step = step_rows * GH, kept_step = step_rows * H
    cdef const floating* gates = <floating*>kept_rows(d, w, w.gates, r0, GH, itemsize)
    cdef const floating* cells = <floating*>kept_rows(d, w, w.cells, r0, H, itemsize)
    cdef const floating* c0 = <floating*>w.c0 + r0 * H
    cdef floating* hidden = <floating*>kept_rows(d, w, w.hidden, r0, H, itemsize)
    cdef const floating* h0 = <floating*>w.h0 + r0 * H
    cdef floating* d_gates = <floating*>kept_rows(d, w, w.d_gates, r0, GH, itemsize)
    # The gradients carried back to h_{t-1} and c_{t-1} gather, step after step, in the
    # state's own gradient where this backward writes it first (a step's h and c are the
    # previous step's output). Gathered apart and copied there after the parts, the copies
    # were 1% of the samples of LSTM 32,128,32,100 stepwise training, in the calling thread
    # between steps; without them its backward took 0.7-5% less in each of six pairs of
    # alternate processes (two threads: 5.83-6.14 -> 5.55-6.07 ms).
    cdef floating* dh = <floating*>state_rows(h0_grad, part_rows(w, w.dh, r0, H, itemsize),
                                               r0 * H * itemsize)
    cdef floating* dc = <floating*>state_rows(c0_grad, part_rows(w, w.dc, r0, H, itemsize),
                                               r0 * H * itemsize)
    cdef floating* tanh_c = <floating*>part_rows(w, w.tanh_c, r0, H, itemsize)
    cdef floating* d_reset = <floating*>part_rows(w, w.d_reset, r0, H, itemsize)
    cdef const floating* h_prev
    cdef index_t t, r
    # Kept part by part, each half sums its rows' gate gradients into db's part as it goes,
    # while they are in its cache: afterwards, the calling thread alone went over all of
    # them, half of them in the other core's cache (input_side).
    cdef floating* d_bias = (<floating*>bias_part(d, w, r0, itemsize)
                             if d.part_major and node.inputs[IN_B] >= 0 else NULL)
    cdef const floating* d_step
    cdef const floating* dY_step
    cdef floating* dY_rows = NULL
    if dY_factor != NULL and d.cell != CELL_RNN:
        dY_rows = <floating*>thread_buffer(BUFFER_OUTPUT_GRADIENT, rows * H * sizeof(floating))
    if d_bias != NULL:
        memset(d_bias, 0, GH * sizeof(floating))
    dY += r0 * H
    memset(dh, 0, rows * H * sizeof(floating))
    if d.cell == CELL_LSTM:                                       # the gradient of c_T
        if dY_factor != NULL:
            memset(dc, 0, rows * H * sizeof(floating))
        else:
            memcpy(dc, dY + T * BH, rows * H * sizeof(floating))
    for t in range(T - 1, -1, -1):
        h_prev = Y + (t - 1) * BH if t > 0 else h0
        dY_step = dY + t * BH
        if dY_factor != NULL:
            # The RNN's step rows of d_gates, which its gradients then overwrite.
            if d.cell == CELL_RNN:
                dY_step = d_gates + t * gates_step
            elif dY_rows != NULL:
                dY_step = dY_rows
            few_inner_rows(rows, H, dY_factor.rank,
                           <const floating*>dY_factor.left + (t * B + r0) * dY_factor.rank,
                           <const floating*>dY_factor.right, <floating*>dY_step)
        if d.cell != CELL_GRUV3:
            step_backward_elementwise(d, rows, dY_step, Y + t * BH,
                                      cells + (t - 1) * kept_step if t > 0 else c0,
                                      <floating*>cells + t * kept_step
                                      if d.cell == CELL_LSTM else hidden + t * kept_step,
                                      h_prev, tanh_c, dh, dc, d_gates + t * gates_step)
        else:
            # h_t is both this step's output and the next step's state.
            add_to(rows * H, dY_step, dh)
            gruv3_output_backward(rows, H, gates + t * gates_step, h_prev, dh,
                                  d_gates + t * gates_step)
            step_product(d, rows, H, H, d_gates + t * gates_step + 2 * H, 3 * H, Wh_h, False,
                         <floating*>w.packed_wh_h_back, d_reset, H, False)
            gruv3_reset_backward(rows, H, gates + t * gates_step, h_prev, d_reset, dh,
                                 d_gates + t * gates_step)
        if d_bias != NULL:       # the input side's: the GRU's n block is d_n, in `hidden`
            d_step = d_gates + t * gates_step
            for r in range(rows):
                if d.cell == CELL_GRU:
                    add_to(2 * H, d_step + r * GH, d_bias)
                    add_to(H, hidden + (t * rows + r) * H, d_bias + 2 * H)
                else:
                    add_to(GH, d_step + r * GH, d_bias)
        if t > 0 or node.inputs[IN_H0] >= 0:
            # RNN and LSTM reach h only through h Whᵀ; the GRUs' direct paths are in dh.
            step_product(d, rows, H, hidden_GH, d_gates + t * gates_step, GH, Wh,
                         False, <floating*>w.packed_wh_back, dh, H,
                         d.cell == CELL_GRU or d.cell == CELL_GRUV3)
    # Rows of the gradients reaching h0 and c0 that gathered elsewhere: added into the
    # state's gradient, or into the pass's (B, H) array for backward_kernel to sum over
    # the batch (the second part's from across the gap).
    state_gradient_rows(h0_grad, <floating*>w.dh, dh, r0 * H, rows * H)
    if d.cell == CELL_LSTM:
        state_gradient_rows(c0_grad, <floating*>w.dc, dc, r0 * H, rows * H)


cdef inline void* state_rows(const StateGradient* target, void* work,
                             size_t offset) noexcept nogil:
    # Where a part's rows of a state's gradient gather during the backward: straight in
    # the state's buffer when it is set here rather than added to, else in `work`.
    if target.grad != NULL and target.assign:
        return <char*>target.grad + offset
    return work


cdef inline void state_gradient_rows(const StateGradient* target, floating* whole,
                                     const floating* part, index_t first,
                                     index_t n) noexcept nogil:
    # A part's n values of a state's gradient, `first` on, into target's buffer, else into
    # `whole`, the pass's (B, H) array: unless they lie there already.
    cdef floating* out = (<floating*>target.grad if target.grad != NULL else whole) + first
    if out == part:
        return
    if target.grad != NULL and not target.assign:
        add_to(n, part, out)
    else:
        memmove(out, part, n * sizeof(floating))


cdef void backward_kernel(Node* node, Node* nodes, const floating* dY) noexcept nogil:
    cdef Dims d = dims_of(node)
    # This pass's copy of the node's buffers, which it may point elsewhere (below).
    cdef Buffers work = (<Buffers*>node.saved[0])[0]
    cdef Buffers* w = &work
    cdef index_t T = d.T, B = d.B, H = d.H, n_in = d.n_in, BH = d.B * d.H
    cdef index_t GH = input_blocks(d.cell) * H, hidden_GH = hidden_blocks(d.cell) * H
    cdef index_t* inputs = node.inputs
    cdef const floating* X = <floating*>node.in_values[IN_X]
    cdef const floating* Wi = <floating*>node.in_values[IN_WI]
    cdef const floating* Wh = <floating*>node.in_values[IN_WH]
    cdef const floating* Wh_h = <floating*>node.in_values[IN_WH_H]
    cdef const floating* Y = <floating*>node.value
    cdef const floating* hidden = <floating*>w.hidden
    cdef const floating* h0 = <floating*>w.h0
    cdef floating* d_gates = <floating*>w.d_gates
    cdef floating* dh = <floating*>w.dh
    cdef floating* dc = <floating*>w.dc
    cdef Recurrence job
    cdef GradientFactor dY_factor
    cdef bint background, wh_set, wi_set
    cdef char* scratch
    cdef size_t used = 0, step_bytes = BH * sizeof(floating) + SPLIT_GAP_BYTES
    cdef size_t itemsize = sizeof(floating)
    cdef index_t block, r0
    job.dY_factor = &dY_factor if gradient_factor(node, &dY_factor) else NULL
    if d.cell == CELL_RNN:
        # The RNN's gate gradients, dY (1 - y²) for tanh, take the place of dY itself:
        # each step's rows of dY are read before theirs are written, and nothing reads
        # them after this pass, so the gradients need no memory of their own to write.
        w.d_gates = <void*>dY
        d_gates = <floating*>dY
        # Where dY is a product (GradientFactor), its memory holds nothing to read, and
        # the gate gradients go there part by part, the halves end to end, as the other
        # cells keep theirs (part_major): each half's weight gradients are then computed
        # by the thread that wrote its rows, rather than each product's columns shared,
        # with half of every row written by the other core.
        if job.dY_factor != NULL and halves_pay(&d, itemsize):
            d.part_major, w.kept_gap = True, 0
    if T == 1:
        # A single step works through dh, dc and tanh(c) in this thread's one reused
        # block, not in the node's own: a stepwise pass's hundred steps would write a
        # hundred of those, each a trip to memory and back, where one block stays in
        # cache. The parts' rows lie a gap apart, as an inference's do. (Without the
        # memory, in the node's own.)
        scratch = <char*>thread_buffer(BUFFER_LAYER, 4 * (step_bytes + 64))
        if scratch != NULL:
            w.split_gap = SPLIT_GAP_BYTES
            w.dh = take(scratch, &used, step_bytes)
            w.dc = take(scratch, &used, step_bytes if d.cell == CELL_LSTM else 0)
            w.tanh_c = take(scratch, &used, step_bytes if d.cell == CELL_LSTM else 0)
            w.d_reset = take(scratch, &used, step_bytes if d.cell == CELL_GRUV3 else 0)
            dh, dc = <floating*>w.dh, <floating*>w.dc
    if d.panels:
        pack(hidden_GH, H, Wh, H, 1, <floating*>w.packed_wh_back)
        if d.cell == CELL_GRUV3:
            pack(H, H, Wh_h, H, 1, <floating*>w.packed_wh_h_back)
    elif has_panel_kernel() and B * hidden_GH * H >= (SHARED_PACKING_MIN_MACS_WIDE
                                                         if wide_vectors()
                                                         else SHARED_PACKING_MIN_MACS_NARROW):
        # A single step (or a sequence whose weights were read in place): its products
        # run on the packing of Wh that every step of this backward pass shares
        # (pack_cache.h), as a sequence node's do on its own.
        w.packed_wh_back = <void*>packed_for_backward(hidden_GH, H, Wh, H, 1)
        w.packed_wh_h_back = (<void*>packed_for_backward(H, H, Wh_h, H, 1)
                              if d.cell == CELL_GRUV3 else NULL)
        d.panels = w.packed_wh_back != NULL and (d.cell != CELL_GRUV3
                                                 or w.packed_wh_h_back != NULL)
    job.is_f64 = floating is double
    job.packs_in_parts = False
    job.d, job.w, job.node, job.dY = &d, w, node, dY
    state_gradient(nodes, inputs[IN_H0], d.h_broadcast, &job.h0_grad)
    state_gradient(nodes, inputs[IN_C0] if d.cell == CELL_LSTM else -1, d.c_broadcast,
                   &job.c0_grad)
    run_recurrence(&job, True)
    # An unbatched state served every row: its gradient is the batch's sum.
    if inputs[IN_H0] >= 0 and d.h_broadcast:
        add_column_sums_into(B, H, dh, <floating*>nodes[inputs[IN_H0]].grad,
                             first_write(nodes, inputs[IN_H0]))
    if d.cell == CELL_LSTM and inputs[IN_C0] >= 0 and d.c_broadcast:
        add_column_sums_into(B, H, dc, <floating*>nodes[inputs[IN_C0]].grad,
                             first_write(nodes, inputs[IN_C0]))

    # Whole-sequence weight gradients: every step's rows in one product each (one each
    # half where they are kept part by part); a short sequence's (a step's) wait to join
    # the next steps' (defer_product, blas.pxd), and a small layer's run in the background.
    background = weight_bytes(&d, sizeof(floating)) <= BACKGROUND_MAX_WEIGHT_BYTES
    wh_set = sets_weight_gradient(nodes, inputs[IN_WH], d.part_major)
    wi_set = sets_weight_gradient(nodes, inputs[IN_WI], d.part_major)
    # Only the GRUv3's nodes have Wh_h: the other cells' have fewer inputs.
    sets_weight_gradient(nodes, inputs[IN_WH_H] if d.cell == CELL_GRUV3 else -1, False)
    if inputs[IN_WH] >= 0:        # step 0 saw h0, step t > 0 saw Y[t - 1]
        if d.part_major:
            gradient_of_halves(&d, w, hidden_GH, H, d_gates, GH, h0, Y,
                               <floating*>nodes[inputs[IN_WH]].grad, background, not wh_set)
        else:
            defer_product(floating is double, hidden_GH, H, B, d_gates, GH, h0, H,
                          nodes[inputs[IN_WH]].grad, H, background)
            defer_product(floating is double, hidden_GH, H, (T - 1) * B, d_gates + B * GH, GH,
                          Y, H, nodes[inputs[IN_WH]].grad, H, background)
    if d.cell == CELL_GRUV3 and inputs[IN_WH_H] >= 0:     # the n block against r ⊙ h
        for block in range(kept_blocks(&d)):       # both kept alike: one product a block
            r0 = block_start(&d, block)
            defer_product(floating is double, H, H, T * (block_start(&d, block + 1) - r0),
                          <floating*>kept_rows(&d, w, d_gates, r0, GH, itemsize) + 2 * H,
                          3 * H, kept_rows(&d, w, <void*>hidden, r0, H, itemsize), H,
                          nodes[inputs[IN_WH_H]].grad, H, background)
    # The input side: d_gates, but for the GRU, whose n block there is d_n in `hidden`
    # (gru_backward), its first two blocks and that one.
    if d.cell == CELL_GRU:
        input_side(&d, w, nodes, inputs, background, 2 * H, 0, d_gates, GH, X, Wi, wi_set)
        input_side(&d, w, nodes, inputs, background, H, 2 * H, hidden, H, X, Wi, wi_set)
    else:
        input_side(&d, w, nodes, inputs, background, GH, 0, d_gates, GH, X, Wi, wi_set)


cdef bint sets_weight_gradient(Node* nodes, index_t i, bint can_set) noexcept nogil:
    # Whether this backward sets input i's gradient rather than adding to it: it writes the
    # buffer first (tape.pxd: first_write), and its products can set it (can_set: a
    # sequence's halves, gradient_of_halves). A buffer written first that they cannot set
    # is zeroed here, as the tape zeroes those of other ops.
    if i < 0 or not first_write(nodes, i):
        return False
    if not can_set:
        zero_gradient(&nodes[i])
    return can_set


ctypedef struct HalvesGradient:
    bint is_f64
    const Dims* d
    const Buffers* w
    index_t m, n, ld
    const void* d_x
    const void* at_start
    const void* source
    void* C
    bint accumulate        # whether C's values are added to, or set
    void* second           # the second half's sum (m x n) where its part wrote it, or NULL


cdef void gradient_of_halves(const Dims* d, const Buffers* w, index_t m, index_t n,
                             const floating* d_x, index_t ld, const floating* at_start,
                             const floating* source, floating* C, bint background,
                             bint accumulate) noexcept nogil:
    # C (m x n) [+]= the weight gradient over both halves of a sequence kept part by part
    # (gradient_of_block): each half's product by the thread whose part wrote its rows, the
    # second into memory of its own, which both threads then add into C
    # (add_second_half_part). With each half's product shared instead, each thread read
    # half of every row from the other core (bench/, two threads, alternating processes,
    # cores close, minimums: LSTM 32,64,16,50 training 0.679-0.694 -> 0.667-0.672 ms; LSTM
    # and GRU 32,128,32,100 within their noise; one thread alike). One thread does both
    # halves the same way, in turn, so that the sums are the same whatever the threads.
    cdef HalvesGradient job
    job.is_f64 = floating is double
    job.d, job.w, job.m, job.n, job.ld = d, w, m, n, ld
    job.d_x, job.at_start, job.source, job.C, job.second = d_x, at_start, source, C, NULL
    job.accumulate = accumulate
    share(halves_gradient_part, &job, True)
    if job.second == NULL:          # without the memory, into C at once
        gradient_of_block(d, w, 1, m, n, d_x, ld, at_start, source, C, background, True)
        return
    share(add_second_half_part, &job, True)


cdef void halves_gradient_part(void* arg, int part, int parts) noexcept nogil:
    cdef HalvesGradient* job = <HalvesGradient*>arg
    if job.is_f64:
        halves_gradient_rows(job, <double*>job.C, part, parts)
    else:
        halves_gradient_rows(job, <float*>job.C, part, parts)


cdef void add_second_half_part(void* arg, int part, int parts) noexcept nogil:
    # The second half's sum into C, each thread adding the half of C's values that its
    # update then reads (optim.pyx: update_part takes the same halves of a parameter): the
    # two halves cross between the cores at once. Added by the calling thread alone, every
    # value of the second half's sum came to it from the other core, and the other core
    # then took half of C's back for its update. Together with C set rather than zeroed
    # first (sets_weight_gradient) and the second half's sum set too (bench/, two
    # threads, alternate processes, vCPUs far apart: LSTM 32,64,16,50 sequence training's
    # backward 0.526-0.531 -> 0.485-0.489 ms, GRU's 0.386-0.389 -> 0.355-0.357; close
    # 0.381-0.387 -> 0.376; LSTM 32,128,32,100 unchanged).
    cdef HalvesGradient* job = <HalvesGradient*>arg
    cdef index_t total = job.m * job.n
    cdef index_t first = total * part // parts, end = total * (part + 1) // parts
    if job.is_f64:
        add_to(end - first, <const double*>job.second + first, <double*>job.C + first)
    else:
        add_to(end - first, <const float*>job.second + first, <float*>job.C + first)


cdef void halves_gradient_rows(HalvesGradient* job, floating* C, int part,
                               int parts) noexcept nogil:
    cdef const Dims* d = job.d
    cdef index_t rows = block_start(d, 2) - block_start(d, 1)
    cdef floating* second
    if part == 0:
        gradient_of_block(d, job.w, 0, job.m, job.n, <const floating*>job.d_x, job.ld,
                          <const floating*>job.at_start, <const floating*>job.source, C,
                          False, job.accumulate)
    if part < parts - 1:
        return
    # The second half, unless memory for its sum or its rows' addresses (which
    # gradient_of_block then finds in this thread's buffer) runs out: the caller then
    # adds it into C itself, as gradient_of_block otherwise would.
    second = <floating*>thread_buffer(BUFFER_HALF_SUM, job.m * job.n * sizeof(floating))
    if second == NULL or thread_buffer(BUFFER_STEP, d.T * rows * sizeof(floating*)) == NULL:
        return
    gradient_of_block(d, job.w, 1, job.m, job.n, <const floating*>job.d_x, job.ld,
                      <const floating*>job.at_start, <const floating*>job.source, second,
                      False, False)
    job.second = second


cdef void gradient_of_block(const Dims* d, const Buffers* w, index_t block, index_t m,
                            index_t n, const floating* d_x, index_t ld,
                            const floating* at_start, const floating* source, floating* C,
                            bint background, bint accumulate) noexcept nogil:
    # C (m x n) [+]= d_xᵀ S over one half's rows of a sequence kept part by part: d_x, m of
    # every row of the half (ld apart, kept_rows), against the rows S each step saw, in
    # the batch's layout: with `at_start` (h0), step 0 saw it and step t > 0 source's
    # step t - 1 (Y); without, step t saw source's step t (X). One product over all the
    # half's steps, S's rows gathered where they lie; without memory for their
    # addresses, one deferred product a step.
    cdef index_t r0 = block_start(d, block), rows = block_start(d, block + 1) - r0
    cdef index_t T = d.T, B = d.B, lag = 1 if at_start != NULL else 0, t, i
    cdef const floating* a = <const floating*>kept_rows(d, w, <void*>d_x, r0, ld,
                                                        sizeof(floating))
    cdef const floating** seen = <const floating**>thread_buffer(
        BUFFER_STEP, T * rows * sizeof(floating*))
    cdef const floating* step_rows
    if seen == NULL and not accumulate:
        memset(C, 0, m * n * sizeof(floating))
    for t in range(T):
        step_rows = (at_start + r0 * n if t < lag else source + ((t - lag) * B + r0) * n)
        if seen == NULL:
            defer_product(floating is double, m, n, rows, a + t * rows * ld, ld, step_rows,
                          n, C, n, background)
            continue
        for i in range(rows):
            seen[t * rows + i] = step_rows + i * n
    if seen != NULL:
        gradient_of_rows(m, n, T * rows, a, ld, seen, C, n, accumulate)


cdef void input_side(const Dims* d, const Buffers* w, Node* nodes, const index_t* inputs,
                     bint background, index_t width, index_t first, const floating* d_x,
                     index_t ld, const floating* X, const floating* Wi,
                     bint wi_set) noexcept nogil:
    # Gradients through x Wiᵀ + b of gate columns [first, first + width), whose gradient
    # d_x (T·B rows, ld apart, as kept_rows lays them) holds: Wi's rows and b's values
    # there, and X's.
    cdef index_t T = d.T, B = d.B, n_in = d.n_in, r, t, block, r0, rows
    cdef floating* db
    cdef floating* dX
    cdef bint add
    cdef const floating* d_block
    cdef const floating* packed_wi_back = NULL
    if inputs[IN_WI] >= 0:
        if d.part_major:
            gradient_of_halves(d, w, width, n_in, d_x, ld, NULL, X,
                               <floating*>nodes[inputs[IN_WI]].grad + first * n_in,
                               background, not wi_set)
        else:
            defer_product(floating is double, width, n_in, T * B, d_x, ld, X, n_in,
                          <floating*>nodes[inputs[IN_WI]].grad + first * n_in, n_in,
                          background)
    if inputs[IN_B] >= 0:
        db = <floating*>nodes[inputs[IN_B]].grad + first
        if d.part_major and w.d_bias != NULL:
            # Each half's sum (backward_rows), the first's first.
            for block in range(kept_blocks(d)):
                add_to(width, <floating*>bias_part(d, w, block_start(d, block),
                                                   sizeof(floating)) + first, db)
        else:
            # Every row as it lies (the RNN's part by part, its halves end to end).
            for r in range(T * B):
                add_to(width, d_x + r * ld, db)
    if inputs[IN_X] >= 0:
        dX = <floating*>nodes[inputs[IN_X]].grad
        # Every row of X is written once below: whole, where no other consumer wrote first
        # (tape.pxd: first_write; a GRU's two calls here, the second adding).
        add = not (width > 0 and first_write(nodes, inputs[IN_X]))
        packed_wi_back = (packed_for_backward(width, n_in, Wi + first * n_in, n_in, 1)
                          if has_panel_kernel() else NULL)
        if not d.part_major:
            if packed_wi_back != NULL:
                panel_product(T * B, n_in, width, d_x, ld, 1, packed_wi_back, dX, n_in, add)
            else:
                gemm(False, False, T * B, n_in, width, 1, d_x, ld, Wi + first * n_in, n_in,
                     1 if add else 0, dX, n_in)
            return
        # Each half's rows of a step go to X's rows of that step.
        for block in range(kept_blocks(d)):
            r0, rows = block_start(d, block), block_start(d, block + 1) - block_start(d, block)
            d_block = <const floating*>kept_rows(d, w, <void*>d_x, r0, ld, sizeof(floating))
            for t in range(T):
                if packed_wi_back != NULL:
                    panel_product(rows, n_in, width, d_block + t * rows * ld, ld, 1,
                                  packed_wi_back, dX + (t * B + r0) * n_in, n_in, add)
                else:
                    gemm(False, False, rows, n_in, width, 1, d_block + t * rows * ld, ld,
                         Wi + first * n_in, n_in, 1 if add else 0,
                         dX + (t * B + r0) * n_in, n_in)


# A step's elementwise backward over its rows (StepElementwise, backward), shared like the
# forward's: where the step was not split already (a sequence whose products the crew
# shares by columns) and the pass pays for the hand-over.
cdef void step_backward_elementwise(const Dims* d, index_t rows, const floating* dY,
                                    const floating* y, const floating* c_prev, floating* kept,
                                    const floating* h_prev, floating* tanh_c, floating* dh,
                                    floating* dc, floating* d_gates) noexcept nogil:
    cdef StepElementwise job
    job.is_f64, job.backward = floating is double, True
    job.d, job.rows, job.dY, job.y, job.gates = d, rows, dY, <void*>y, NULL
    job.c_prev, job.kept, job.h_prev = c_prev, <void*>kept, h_prev
    job.tanh_c, job.dh, job.dc, job.d_gates = tanh_c, dh, dc, d_gates
    share(elementwise_part, &job, elementwise_pays(d, rows))


cdef void backward_elementwise_rows(const StepElementwise* job, const floating* y, index_t r0,
                                    index_t r1) noexcept nogil:
    cdef const Dims* d = job.d
    cdef index_t H = d.H, rows = r1 - r0, GH = input_blocks(d.cell) * d.H
    cdef floating* dh = <floating*>job.dh + r0 * H
    # h_t is both this step's output and the next step's state.
    add_to(rows * H, <const floating*>job.dY + r0 * H, dh)
    if d.cell == CELL_RNN:
        activation_grad(d.act, rows * H, y + r0 * H, dh, <floating*>job.d_gates + r0 * GH)
    elif d.cell == CELL_LSTM:      # d_gates holds the gates until these replace them
        lstm_backward(rows, H, <floating*>job.d_gates + r0 * GH,
                      <const floating*>job.c_prev + r0 * H,
                      <const floating*>job.kept + r0 * H, <floating*>job.tanh_c + r0 * H, dh,
                      <floating*>job.dc + r0 * H)
    else:
        gru_backward(rows, H, <floating*>job.d_gates + r0 * GH, <floating*>job.kept + r0 * H,
                     <const floating*>job.h_prev + r0 * H, dh)


# The activations' derivatives from their outputs, which is what the gates keep.
cdef inline floating sigmoid_slope(floating s) noexcept nogil:
    return s * (<floating>1 - s)


cdef inline floating tanh_slope(floating t) noexcept nogil:
    return <floating>1 - t * t


cdef void add_column_sums(index_t rows, index_t n, const floating* m, floating* out) noexcept nogil:
    cdef index_t r
    for r in range(rows):
        add_to(n, m + r * n, out)


cdef void add_column_sums_into(index_t B, index_t H, const floating* d_state, floating* grad,
                               bint assign) noexcept nogil:
    # grad (H) gets the batch's sum of d_state (B x H): an unbatched state's gradient.
    # With `assign`, its buffer holds nothing yet (first_write).
    if assign:
        memset(grad, 0, H * sizeof(floating))
    add_column_sums(B, H, d_state, grad)


cdef void state_gradient(Node* nodes, index_t state, bint broadcast,
                         StateGradient* target) noexcept nogil:
    # Where the backward's parts put their rows of a batched state's gradient (the
    # state's own buffer); an unbatched state's, or a constant's, stay in the pass's.
    target.grad, target.assign = NULL, False
    if state >= 0 and not broadcast:
        target.grad = nodes[state].grad
        target.assign = first_write(nodes, state)


cdef void lstm_backward(index_t B, index_t H, floating* gates, const floating* c_prev,
                        const floating* c, floating* tanh_c, const floating* dh,
                        floating* dc) noexcept nogil:
    # c' reaches the loss directly (dc) and through h' = o tanh(c'); dc leaves as the
    # gradient of c, dc' f. tanh(c') first, in a loop of its own that vectorises. The gate
    # gradients replace the gates they come from (the step's gates serve nothing after
    # this), each value read before its place is written: the pass then stays within the
    # lines it reads instead of writing as many again into memory of their own. Each gate
    # block has a pointer of its own: indexes like r * H + j or 2 * H + j, which -fwrapv
    # lets wrap, keep the compiler from vectorising the loop.
    cdef index_t r, j
    cdef floating* i_gate
    cdef floating* f_gate
    cdef floating* candidate
    cdef floating* o_gate
    cdef floating i, f, g, o, dc_total
    memcpy(tanh_c, c, B * H * sizeof(floating))
    tanh_in_place(B * H, tanh_c)
    for r in range(B):
        i_gate = gates + r * 4 * H
        f_gate, candidate, o_gate = i_gate + H, i_gate + 2 * H, i_gate + 3 * H
        for j in range(H):
            i, f, g, o = i_gate[j], f_gate[j], candidate[j], o_gate[j]
            dc_total = dc[j] + dh[j] * o * tanh_slope(tanh_c[j])
            i_gate[j] = dc_total * g * sigmoid_slope(i)
            f_gate[j] = dc_total * c_prev[j] * sigmoid_slope(f)
            candidate[j] = dc_total * i * tanh_slope(g)
            o_gate[j] = dh[j] * tanh_c[j] * sigmoid_slope(o)
            dc[j] = dc_total * f
        dc, dh, tanh_c, c_prev = dc + H, dh + H, tanh_c + H, c_prev + H


cdef void gru_backward(index_t B, index_t H, floating* gates, floating* hidden_n,
                       const floating* h_prev, floating* dh) noexcept nogil:
    # The n block enters the input projection as is and the hidden one scaled by r; dh
    # leaves holding the direct path of h' = (1 - z) n + z h, the GEMM adds the rest. The
    # gradients take the place of what they come from, as in lstm_backward: the gates
    # become the gradient of h Whᵀ, [d_r, d_z, d_n ⊙ r], and h Wh_nᵀ, read for d_r, gives
    # way to d_n, the n block of the input side's [d_r, d_z, d_n] (backward_kernel). Pointers
    # per block, likewise, so that the loop vectorises.
    cdef index_t r, j
    cdef floating* reset
    cdef floating* update
    cdef floating* candidate
    cdef floating s_r, s_z, n, d_n, d_r, d_z
    for r in range(B):
        reset = gates + r * 3 * H
        update, candidate = reset + H, reset + 2 * H
        for j in range(H):
            s_r, s_z, n = reset[j], update[j], candidate[j]
            d_n = dh[j] * (<floating>1 - s_z) * tanh_slope(n)
            d_r = d_n * hidden_n[j] * sigmoid_slope(s_r)
            d_z = dh[j] * (h_prev[j] - n) * sigmoid_slope(s_z)
            reset[j], update[j], candidate[j] = d_r, d_z, d_n * s_r
            hidden_n[j] = d_n
            dh[j] = dh[j] * s_z
        dh, hidden_n, h_prev = dh + H, hidden_n + H, h_prev + H


cdef void gruv3_output_backward(index_t B, index_t H, const floating* gates,
                                const floating* h_prev, const floating* dh,
                                floating* d_gates) noexcept nogil:
    # The z and n blocks; r needs the gradient of r ⊙ h, a GEMM away.
    cdef index_t r, j, k
    cdef const floating* g
    cdef floating* dg
    cdef floating update, candidate
    for r in range(B):
        g = gates + r * 3 * H
        dg = d_gates + r * 3 * H
        for j in range(H):
            k = r * H + j
            update, candidate = g[H + j], g[2 * H + j]
            dg[H + j] = dh[k] * (h_prev[k] - candidate) * sigmoid_slope(update)
            dg[2 * H + j] = dh[k] * (<floating>1 - update) * tanh_slope(candidate)


cdef void gruv3_reset_backward(index_t B, index_t H, const floating* gates,
                               const floating* h_prev, const floating* d_reset_h, floating* dh,
                               floating* d_gates) noexcept nogil:
    # h reaches h' through r ⊙ h and through z h; the GEMM adds the r and z projections.
    cdef index_t r, j, k
    cdef const floating* g
    cdef floating* dg
    cdef floating reset
    for r in range(B):
        g = gates + r * 3 * H
        dg = d_gates + r * 3 * H
        for j in range(H):
            k = r * H + j
            reset = g[j]
            dg[j] = d_reset_h[k] * h_prev[k] * sigmoid_slope(reset)
            dh[k] = d_reset_h[k] * reset + dh[k] * g[H + j]
