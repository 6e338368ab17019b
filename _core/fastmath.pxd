# Activations shared by the fused kernels (Dense and the recurrent cells) and rc.sigmoid
# (ops_elementwise.logistic_values), inlined where they are cimported.
from libc.math cimport tanh, exp, fabsf, copysignf
from libc.string cimport memcpy
from cython cimport floating

cdef extern from "activations.h" nogil:
    size_t logistic_vectors(size_t n, float* v)
    size_t tanh_vectors(size_t n, float* v)
    const float TANH_FAR

# float32 exp, sigmoid and tanh to a few ulp, written without branches or calls so that
# the loops applying them vectorise (libm's are scalar calls and cost as much as the
# GEMMs). float64, the dtype of gradient checks, keeps libm's. Constants in float code are
# cast: Cython writes a bare 1 next to a float as the double 1.0, and C then computes the
# whole expression in double.

cdef inline float exp_parts(float x, float* scale) noexcept nogil:
    # eˣ = 2ⁿ (1 + q): returns q and sets scale = 2ⁿ. x = n ln2 + r with |r| ≤ ln2/2, and
    # q = eʳ - 1 by its Taylor series (the next term is below float precision). Clamping
    # keeps 2ⁿ a normal float; a NaN passes through the selects and stays NaN.
    cdef float log2e = 1.4426950408889634, ln2_hi = 0.693145751953125
    cdef float ln2_lo = 1.4286068203094173e-06, shifter = 12582912.0    # 1.5·2²³
    cdef float lowest = -87.0, highest = 88.0
    cdef float low = lowest if x < lowest else x
    cdef float high = highest if x > highest else x
    cdef float clamped = low if x < 0 else high
    # Adding 1.5·2²³ rounds to an integer n and leaves n in the low mantissa bits.
    cdef float shifted = clamped * log2e + shifter
    cdef float n = shifted - shifter
    cdef float r = clamped - n * ln2_hi - n * ln2_lo
    cdef unsigned int bits
    memcpy(&bits, &shifted, sizeof(float))
    bits = (bits - 0x4B400000u + 127u) << 23
    memcpy(scale, &bits, sizeof(float))
    return r * (<float>1 + r * (<float>(1 / 2.) + r * (<float>(1 / 6.) + r * (<float>(1 / 24.)
                + r * (<float>(1 / 120.) + r * (<float>(1 / 720.) + r * <float>(1 / 5040.)))))))


cdef inline floating logistic(floating v) noexcept nogil:
    cdef float scale, q
    if floating is float:
        q = exp_parts(-v, &scale)
        return <float>1 / (<float>1 + (scale + scale * q))
    else:
        return 1 / (1 + exp(-v))


cdef inline floating tanh_of(floating v) noexcept nogil:
    # With e = e^(-2|v|) = 2ⁿ (1 + q): tanh|v| = -(2ⁿq + (2ⁿ - 1)) / (1 + e) up to TANH_FAR,
    # no cancellation near 0, and 1 - 2e / (1 + e) above it, where only the last subtraction
    # rounds much (activations.h says what each gains).
    cdef float scale, q, w
    cdef bint far
    if floating is float:
        q = exp_parts(<float>-2 * fabsf(v), &scale)
        far = fabsf(v) > TANH_FAR
        w = (scale * q + (scale if far else scale - <float>1)) / (scale * q + (scale + <float>1))
        return copysignf(<float>1 - w * <float>2 if far else -w, v)
    else:
        return tanh(v)


# In place over an array: float32's whole vectors in activations.h (the same values,
# rounded alike though scaled by powers of two, exp's argument folded into its constants,
# with a cheaper clamp), the rest here.
cdef inline void logistic_in_place(Py_ssize_t n, floating* v) noexcept nogil:
    cdef Py_ssize_t k = 0
    if floating is float:
        k = logistic_vectors(n, v)
    for k in range(k, n):
        v[k] = logistic(v[k])


cdef inline void tanh_in_place(Py_ssize_t n, floating* v) noexcept nogil:
    cdef Py_ssize_t k = 0
    if floating is float:
        k = tanh_vectors(n, v)
    for k in range(k, n):
        v[k] = tanh_of(v[k])
