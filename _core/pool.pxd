# The memory of the arrays recur's kernels return (pool.pyx): kept when an array dies and
# handed to the next array of its size, so a loop's steps stop faulting pages in.
cimport numpy as cnp

# A new C-contiguous, writeable, uninitialised array of `typenum` with shape dims[:nd].
cdef cnp.ndarray new_array(int nd, const cnp.npy_intp* dims, int typenum)
# The same with a shape given as a tuple of ints.
cdef cnp.ndarray new_array_shaped(tuple shape, int typenum)
