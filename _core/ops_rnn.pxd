from recur._core.tape cimport Node, GradientFactor

# The four cells of SPEC §4, in the order registry.pxd lists their op codes.
cdef enum Cell:
    CELL_RNN = 0
    CELL_LSTM = 1
    CELL_GRU = 2
    CELL_GRUV3 = 3

# A node's inputs, in this order: x, h0, c0 (the LSTM's), Wi, Wh, b, Wh_h (GRUv3's).
cdef enum:
    N_INPUTS = 7
    IN_X = 0
    IN_H0 = 1
    IN_C0 = 2
    IN_WI = 3
    IN_WH = 4
    IN_B = 5
    IN_WH_H = 6
    # The weights, whose gradient products backward defers (blas.pxd: defer_product).
    DEFERRED_INPUTS = (1 << IN_WI) | (1 << IN_WH) | (1 << IN_WH_H)
    # The input, the initial states and the weights, whose gradients backward writes
    # whole (tape.pxd: first_write; a weight's it zeroes itself where its products add).
    WHOLE_INPUTS = (1 << IN_X) | (1 << IN_H0) | DEFERRED_INPUTS
    WHOLE_INPUTS_LSTM = WHOLE_INPUTS | (1 << IN_C0)

# A cell step is a sequence of length one, so one backward serves the step and the sequence
# op codes of every cell.
cdef void recurrent_backward(Node* node, Node* nodes) noexcept nogil

# Whether a sequence node's backward reads its output's gradient from `factor` (tape.pxd:
# GradientFactor): the gradient of its (T, B, H) output, with nothing after it (the LSTM's
# c_T) reached.
cdef bint reads_output_factor(const Node* node, const GradientFactor* factor) noexcept nogil
