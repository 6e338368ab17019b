from recur._core.tape cimport Node

# The four cells of SPEC §4, in the order registry.pxd lists their op codes.
cdef enum Cell:
    CELL_RNN = 0
    CELL_LSTM = 1
    CELL_GRU = 2
    CELL_GRUV3 = 3

# A cell step is a sequence of length one, so one backward serves the step and the sequence
# op codes of every cell.
cdef void recurrent_backward(Node* node, Node* nodes) noexcept nogil
