from recur._core.tape cimport Node, GradientFactor
from cython cimport floating

cdef void matmul_backward(Node* node, Node* nodes) noexcept nogil
cdef void dense_backward(Node* node, Node* nodes) noexcept nogil
# The product that stands for a Dense node's dx where its backward leaves it so (tape.pxd:
# GradientFactor).
cdef bint input_gradient_factor(const Node* node, GradientFactor* factor) noexcept nogil

# Activation codes shared by the fused kernels (Dense and the recurrent cells).
cdef enum Activation:
    ACT_IDENTITY = 0
    ACT_TANH = 1
    ACT_SIGMOID = 2
    ACT_RELU = 3

# y ← act(y) in place, and dz ← dy · act'(y) from the activated y.
cdef void activate(int act, Py_ssize_t n, floating* y) noexcept nogil
cdef void activation_grad(int act, Py_ssize_t n, const floating* y, const floating* dy,
                          floating* dz) noexcept nogil
