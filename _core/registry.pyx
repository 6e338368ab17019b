# The op table: every op code with a backward function, in one place. Importing this
# module fills the tape's table; recur.tensor imports it first.
from recur._core.tape cimport register_backward, register_factor, register_factor_reader
from recur._core cimport ops_elementwise as elementwise
from recur._core cimport ops_shape as shape
from recur._core cimport ops_dense as dense
from recur._core cimport ops_loss as loss
from recur._core cimport ops_rnn as rnn

register_backward(OP_CAST, elementwise.cast_backward)
for op in (OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_WHERE):
    register_backward(op, elementwise.binary_backward)
for op in (OP_POW, OP_NEG, OP_TANH, OP_SIGMOID, OP_RELU, OP_LEAKYRELU, OP_ELU, OP_SOFTPLUS,
           OP_EXP, OP_LOG, OP_SQRT, OP_ABS, OP_SQUARE, OP_CLIP):
    register_backward(op, elementwise.unary_backward)

for op in (OP_SUM, OP_BROADCAST, OP_MAX, OP_STRIDED):
    register_backward(op, shape.strided_backward)
register_backward(OP_SOFTMAX, shape.softmax_backward)
register_backward(OP_LOGSOFTMAX, shape.softmax_backward)
register_backward(OP_GATHER, shape.gather_backward)
register_backward(OP_CONCAT, shape.concat_backward)

# The ops that defer their weights' gradient products, and those weights' inputs; the
# ops that write some inputs' gradients whole (tape.pxd: first_write), and those inputs.
register_backward(OP_SQUARED_ERROR, loss.squared_error_backward, 0, 0b11)

register_backward(OP_MATMUL, dense.matmul_backward)
register_backward(OP_DENSE, dense.dense_backward, 1 << 1, 1 << 0)
# A head's dx may stay a product that the sequence before it reads step by step
# (tape.pxd: GradientFactor).
register_factor(OP_DENSE, dense.input_gradient_factor)
for op in (OP_RNN_SEQ, OP_LSTM_SEQ, OP_GRU_SEQ, OP_GRUV3_SEQ):
    register_factor_reader(op, rnn.reads_output_factor)

for op in (OP_RNN_STEP, OP_LSTM_STEP, OP_GRU_STEP, OP_GRUV3_STEP,
           OP_RNN_SEQ, OP_LSTM_SEQ, OP_GRU_SEQ, OP_GRUV3_SEQ):
    register_backward(op, rnn.recurrent_backward, rnn.DEFERRED_INPUTS,
                      rnn.WHOLE_INPUTS_LSTM if op in (OP_LSTM_STEP, OP_LSTM_SEQ)
                      else rnn.WHOLE_INPUTS)

# Op codes by name, for the Python side (recur/ops.py) and the registry-driven tests.
CODES = {name: code for name, code in (
    ("CAST", OP_CAST), ("ADD", OP_ADD), ("SUB", OP_SUB), ("MUL", OP_MUL), ("DIV", OP_DIV),
    ("POW", OP_POW), ("NEG", OP_NEG), ("TANH", OP_TANH), ("SIGMOID", OP_SIGMOID),
    ("RELU", OP_RELU), ("LEAKYRELU", OP_LEAKYRELU), ("ELU", OP_ELU), ("SOFTPLUS", OP_SOFTPLUS),
    ("EXP", OP_EXP), ("LOG", OP_LOG), ("SQRT", OP_SQRT), ("ABS", OP_ABS),
    ("SQUARE", OP_SQUARE), ("WHERE", OP_WHERE), ("CLIP", OP_CLIP), ("SUM", OP_SUM),
    ("BROADCAST", OP_BROADCAST), ("MAX", OP_MAX), ("SOFTMAX", OP_SOFTMAX),
    ("LOGSOFTMAX", OP_LOGSOFTMAX), ("STRIDED", OP_STRIDED), ("GATHER", OP_GATHER),
    ("CONCAT", OP_CONCAT), ("SQUARED_ERROR", OP_SQUARED_ERROR), ("MATMUL", OP_MATMUL),
    ("DENSE", OP_DENSE),
    ("RNN_STEP", OP_RNN_STEP), ("LSTM_STEP", OP_LSTM_STEP), ("GRU_STEP", OP_GRU_STEP),
    ("GRUV3_STEP", OP_GRUV3_STEP), ("RNN_SEQ", OP_RNN_SEQ), ("LSTM_SEQ", OP_LSTM_SEQ),
    ("GRU_SEQ", OP_GRU_SEQ), ("GRUV3_SEQ", OP_GRUV3_SEQ),
)}
