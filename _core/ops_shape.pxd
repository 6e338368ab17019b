from recur._core.tape cimport Node

cdef void strided_backward(Node* node, Node* nodes) noexcept nogil
cdef void softmax_backward(Node* node, Node* nodes) noexcept nogil
cdef void gather_backward(Node* node, Node* nodes) noexcept nogil
cdef void concat_backward(Node* node, Node* nodes) noexcept nogil
