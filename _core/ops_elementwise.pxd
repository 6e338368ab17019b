from recur._core.tape cimport Node

cdef void cast_backward(Node* node, Node* nodes) noexcept nogil
cdef void unary_backward(Node* node, Node* nodes) noexcept nogil
cdef void binary_backward(Node* node, Node* nodes) noexcept nogil
