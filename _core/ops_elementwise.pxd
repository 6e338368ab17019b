cimport numpy as cnp
from recur._core.tape cimport Node

cdef void cast_backward(Node* node, Node* nodes) noexcept nogil
cdef void unary_backward(Node* node, Node* nodes) noexcept nogil
cdef void binary_backward(Node* node, Node* nodes) noexcept nogil

# Whether x and y share one float dtype (float32 or float64) and one shape, C-contiguous
# both: the operands the fused same-shape kernels take (this module's arithmetic,
# ops_loss's squared error).
cdef bint same_float_shape(cnp.ndarray x, cnp.ndarray y) noexcept
