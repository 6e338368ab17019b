# Op codes of every node kind. The backward function of each is registered in
# registry.pyx, in one table; its forward and backward live side by side in its ops_*.pyx.
cdef enum OpCode:
    OP_LEAF = 0            # a watched parameter
    OP_ALIAS               # a contiguous block of its input: shares its value and gradient

    # ops_elementwise.pyx: numpy-broadcasting arithmetic and activations
    OP_CAST
    OP_ADD
    OP_SUB
    OP_MUL
    OP_DIV
    OP_POW
    OP_NEG
    OP_TANH
    OP_SIGMOID
    OP_RELU
    OP_LEAKYRELU
    OP_ELU
    OP_SOFTPLUS
    OP_EXP
    OP_LOG
    OP_SQRT
    OP_ABS
    OP_SQUARE
    OP_WHERE
    OP_CLIP

    # ops_shape.pyx: reductions, layout and indexing
    OP_SUM
    OP_BROADCAST
    OP_MAX
    OP_SOFTMAX
    OP_LOGSOFTMAX
    OP_STRIDED
    OP_GATHER
    OP_CONCAT

    # ops_loss.pyx: the mean squared error as one node
    OP_SQUARED_ERROR

    # ops_dense.pyx: matrix products and the fused Dense layer
    OP_MATMUL
    OP_DENSE

    # ops_rnn.pyx: one node per cell step, one node per whole sequence
    OP_RNN_STEP
    OP_LSTM_STEP
    OP_GRU_STEP
    OP_GRUV3_STEP
    OP_RNN_SEQ
    OP_LSTM_SEQ
    OP_GRU_SEQ
    OP_GRUV3_SEQ

    N_OPS
