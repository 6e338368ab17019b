from recur._core.tape cimport Node

cdef void squared_error_backward(Node* node, Node* nodes) noexcept nogil
