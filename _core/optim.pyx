"""Fused optimiser updates: one call updates every parameter of a training step.

recur/optimise.py passes sequences of C-contiguous float32/float64 arrays, one entry per
parameter: the parameter values (updated in place), their gradients (only read) and the
rule's state buffers (updated in place). Their data pointers are gathered into an array of
`Slot`s while the GIL is held; the update then loops over every slot with the GIL released,
choosing the float or double kernel per slot, so one call may mix float32 and float64
parameters.

Scalar coefficients (bias corrections, products of hyperparameters) are computed in double
and rounded once to the parameter's dtype; the elementwise arithmetic runs in that dtype,
in the order torch's CPU kernels evaluate it (short of their fused multiply-adds), so
results agree with torch.optim to a rounding or two per step.

The rules, for a gradient g, a parameter p and the step count t of that parameter:

  descent   p -= lr g
  momentum  v = rho v - lr g;  p += v
  nesterov  v' = rho v - lr g;  p += rho v' - lr g      (= rho² v - (1 + rho) lr g)
  rmsprop   a = rho a + (1 - rho) g²;  p -= lr g / (√a + eps)
  adam(w)   p *= 1 - lr weight_decay;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;
            p -= lr / (1 - b1^t) · m / (√v / √(1 - b2^t) + eps)
  clip      out = min(max(g, -bound), bound)   (NaN stays NaN)
  scale     out = factor g
"""
cimport numpy as cnp
from cython cimport floating
from libc.math cimport sqrt, sqrtf, pow, isfinite, fabs, frexp, ldexp
from libc.stdlib cimport calloc, free
from recur._core.blas cimport share

cnp.import_array()


cdef enum Rule:
    DESCENT
    MOMENTUM
    NESTEROV
    RMSPROP
    ADAM
    CLIP_VALUE
    SCALE


# Hyperparameters of one call, shared by every parameter; each rule reads its own fields.
cdef struct Hyper:
    double lr
    double rho
    double beta1
    double beta2
    double eps
    double weight_decay
    double bound       # ClipValue's threshold
    double factor      # the gradient scale of ClipNorm


# One parameter's arrays. `value` is the array written: the parameter, or for CLIP_VALUE and
# SCALE the output gradient. `state` are the rule's buffers (velocity, mean square, moments).
cdef struct Slot:
    void* value
    const void* grad
    void* state[2]
    Py_ssize_t size
    bint is_double
    double step        # Adam's per-parameter step count t, already incremented


cdef inline floating root(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef void descend(floating* value, const floating* grad, Py_ssize_t n,
                  floating lr) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        value[i] -= lr * grad[i]


cdef void momentum_step(floating* value, const floating* grad, floating* velocity,
                        Py_ssize_t n, floating lr, floating rho) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        velocity[i] = rho * velocity[i] - lr * grad[i]
        value[i] += velocity[i]


cdef void nesterov_step(floating* value, const floating* grad, floating* velocity,
                        Py_ssize_t n, floating lr, floating rho) noexcept nogil:
    # Looking ahead along the new velocity: rho v' - lr g equals rho² v - (1 + rho) lr g.
    cdef Py_ssize_t i
    for i in range(n):
        velocity[i] = rho * velocity[i] - lr * grad[i]
        value[i] += rho * velocity[i] - lr * grad[i]


cdef void rmsprop_step(floating* value, const floating* grad, floating* mean_square,
                       Py_ssize_t n, floating lr, floating rho, floating keep,
                       floating eps) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        mean_square[i] = rho * mean_square[i] + keep * grad[i] * grad[i]
        value[i] -= lr * (grad[i] / (root(mean_square[i]) + eps))


cdef void adam_step(floating* value, const floating* grad, floating* first_moment,
                    floating* second_moment, Py_ssize_t n, floating decay, floating keep1,
                    floating beta2, floating keep2, floating step_size,
                    floating root_correction2, floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, m, denominator
    for i in range(n):
        g = grad[i]
        # b1 m + (1 - b1) g, written as the interpolation torch evaluates: closer to it.
        m = first_moment[i] + keep1 * (g - first_moment[i])
        first_moment[i] = m
        second_moment[i] = beta2 * second_moment[i] + keep2 * g * g
        denominator = root(second_moment[i]) / root_correction2 + eps
        value[i] = value[i] * decay - step_size * (m / denominator)


cdef void clip_values(floating* out, const floating* grad, Py_ssize_t n,
                      floating bound) noexcept nogil:
    # Comparisons rather than fmin/fmax, which would turn a NaN gradient into the bound.
    cdef Py_ssize_t i
    cdef floating g
    for i in range(n):
        g = grad[i]
        if g > bound:
            g = bound
        elif g < -bound:
            g = -bound
        out[i] = g


cdef void scale_values(floating* out, const floating* grad, Py_ssize_t n,
                       floating factor) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = factor * grad[i]


cdef void update_slot(Rule rule, floating* value, const Slot* slot,
                      const Hyper* h) noexcept nogil:
    cdef const floating* grad = <const floating*>slot.grad
    cdef floating* first = <floating*>slot.state[0]
    cdef floating* second = <floating*>slot.state[1]
    cdef Py_ssize_t n = slot.size
    if rule == DESCENT:
        descend(value, grad, n, <floating>h.lr)
    elif rule == MOMENTUM:
        momentum_step(value, grad, first, n, <floating>h.lr, <floating>h.rho)
    elif rule == NESTEROV:
        nesterov_step(value, grad, first, n, <floating>h.lr, <floating>h.rho)
    elif rule == RMSPROP:
        rmsprop_step(value, grad, first, n, <floating>h.lr, <floating>h.rho,
                     <floating>(1.0 - h.rho), <floating>h.eps)
    elif rule == ADAM:
        adam_step(value, grad, first, second, n,
                  <floating>(1.0 - h.lr * h.weight_decay), <floating>(1.0 - h.beta1),
                  <floating>h.beta2, <floating>(1.0 - h.beta2),
                  <floating>(h.lr / (1.0 - pow(h.beta1, slot.step))),
                  <floating>sqrt(1.0 - pow(h.beta2, slot.step)),
                  <floating>h.eps)
    elif rule == CLIP_VALUE:
        clip_values(value, grad, n, <floating>h.bound)
    elif rule == SCALE:
        scale_values(value, grad, n, <floating>h.factor)


cdef enum:
    # Values in all (parameters of a call) from which the crew's two threads share an
    # update, each taking half of every parameter: the rules are elementwise, so the halves
    # give the serial result, and a step's update is a pass over memory that one core
    # alone saturates (Xeon, Adam over LSTM 256,1024's 5.3M values: 4.2 ms alone, 1.7
    # shared). Small updates pay too: after a training step the gradients lie half in the
    # other core's cache, where the helper wrote them (Zen 4 EPYC, GRU 32,128's 62K values
    # after a stepwise training step, rc.update 70-74 -> 50-55 µs; with every array hot in
    # one core's cache, Adam over 12288 values alone took 6.0 µs and over 16384 shared 7.4,
    # about what they would take alone).
    SHARED_UPDATE_MIN_VALUES = 16384


cdef struct Update:
    Rule rule
    const Slot* slots
    Py_ssize_t count
    const Hyper* h


cdef void update_part(void* arg, int part, int parts) noexcept nogil:
    cdef const Update* u = <const Update*>arg
    cdef Slot piece
    cdef Py_ssize_t i, k, first, end, itemsize
    for i in range(u.count):
        piece = u.slots[i]
        first = piece.size * part // parts
        end = piece.size * (part + 1) // parts
        itemsize = sizeof(double) if piece.is_double else sizeof(float)
        piece.size = end - first
        piece.value = <char*>piece.value + first * itemsize
        piece.grad = <const char*>piece.grad + first * itemsize
        for k in range(2):
            if piece.state[k] != NULL:
                piece.state[k] = <char*>piece.state[k] + first * itemsize
        if piece.is_double:
            update_slot(u.rule, <double*>piece.value, &piece, u.h)
        else:
            update_slot(u.rule, <float*>piece.value, &piece, u.h)


cdef void update_all(Rule rule, const Slot* slots, Py_ssize_t count,
                     const Hyper* h) noexcept nogil:
    cdef Update u
    cdef Py_ssize_t i, values = 0
    u.rule, u.slots, u.count, u.h = rule, slots, count, h
    for i in range(count):
        values += slots[i].size
    share(update_part, &u, values >= SHARED_UPDATE_MIN_VALUES)


cdef double sum_of_squares(const floating* grad, Py_ssize_t n, double scale) noexcept nogil:
    # Four running sums rather than one: independent additions the CPU can overlap.
    cdef Py_ssize_t i, whole = n - n % 4
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, x
    for i in range(0, whole, 4):
        s0 += (grad[i] * scale) * (grad[i] * scale)
        s1 += (grad[i + 1] * scale) * (grad[i + 1] * scale)
        s2 += (grad[i + 2] * scale) * (grad[i + 2] * scale)
        s3 += (grad[i + 3] * scale) * (grad[i + 3] * scale)
    for i in range(whole, n):
        x = grad[i] * scale
        s0 += x * x
    return (s0 + s1) + (s2 + s3)


cdef double largest_magnitude(const floating* grad, Py_ssize_t n) noexcept nogil:
    # A NaN is returned as soon as it is met: the norm is then NaN whatever else is there.
    cdef Py_ssize_t i
    cdef double largest = 0.0, x
    for i in range(n):
        x = fabs(<double>grad[i])
        if x != x:
            return x
        if x > largest:
            largest = x
    return largest


cdef double scaled_norm(const Slot* slots, Py_ssize_t count, double scale) noexcept nogil:
    cdef Py_ssize_t i
    cdef double total = 0.0
    for i in range(count):
        if slots[i].is_double:
            total += sum_of_squares(<const double*>slots[i].grad, slots[i].size, scale)
        else:
            total += sum_of_squares(<const float*>slots[i].grad, slots[i].size, scale)
    return sqrt(total)


cdef double global_l2_norm(const Slot* slots, Py_ssize_t count) noexcept nogil:
    cdef double norm = scaled_norm(slots, count, 1.0)
    cdef double largest = 0.0, x
    cdef Py_ssize_t i
    cdef int exponent
    if isfinite(norm):
        return norm
    # The squares of float64 gradients beyond ~1e154 overflow although the norm may not:
    # measure again in units of a power of two near the largest magnitude (exact scaling),
    # which keeps every square <= 1.
    for i in range(count):
        if slots[i].is_double:
            x = largest_magnitude(<const double*>slots[i].grad, slots[i].size)
        else:
            x = largest_magnitude(<const float*>slots[i].grad, slots[i].size)
        if x != x:
            return x
        if x > largest:
            largest = x
    if not isfinite(largest) or largest == 0.0:
        return largest
    frexp(largest, &exponent)
    return ldexp(scaled_norm(slots, count, ldexp(1.0, -exponent)), exponent)


# Where an empty array points: some empty arrays have no data pointer, and no kernel reads it.
cdef double EMPTY = 0.0


cdef class Slots:
    """The data pointers of one call's arrays, gathered with the GIL so the update can run
    without it. Keeps the arrays referenced until the update is over."""
    cdef Slot* slots
    cdef Py_ssize_t count
    cdef tuple arrays

    def __cinit__(self, grads, values=None, states=(), steps=None):
        grads = tuple(grads)
        values = None if values is None else tuple(values)
        states = tuple(tuple(state) for state in states)
        steps = None if steps is None else tuple(steps)
        if len(states) > 2:
            raise ValueError(f"optimiser kernel: at most 2 state buffers, got {len(states)}")
        self.count = len(grads)
        for column in (values, steps) + states:
            if column is not None and len(column) != self.count:
                raise ValueError(f"optimiser kernel: {len(column)} arrays for "
                                 f"{self.count} gradients")
        self.arrays = (grads, values, states, steps)
        self.slots = <Slot*>calloc(max(self.count, 1), sizeof(Slot))
        if self.slots == NULL:
            raise MemoryError()
        cdef Py_ssize_t i, k
        cdef Slot* slot
        for i in range(self.count):
            slot = &self.slots[i]
            grad = grads[i]
            slot.grad = array_data(grad, grad, False)
            slot.size = cnp.PyArray_SIZE(grad)
            slot.is_double = cnp.PyArray_TYPE(grad) == cnp.NPY_DOUBLE
            if values is not None:
                slot.value = array_data(values[i], grad, True)
            for k in range(len(states)):
                slot.state[k] = array_data(states[k][i], grad, True)
            if steps is not None:
                slot.step = steps[i]

    def __dealloc__(self):
        free(self.slots)


cdef void* array_data(array, grad, bint written) except NULL:
    """The data of `array`, once it is known to be safe to use beside `grad` in C."""
    if not isinstance(array, cnp.ndarray):
        raise TypeError(f"optimiser kernel: expected an ndarray, got {type(array).__name__}")
    cdef cnp.ndarray a = array
    cdef int type_num = cnp.PyArray_TYPE(a)
    if type_num != cnp.NPY_FLOAT and type_num != cnp.NPY_DOUBLE:
        raise TypeError(f"optimiser kernel: expected float32 or float64, got {a.dtype}")
    if not cnp.PyArray_ISCARRAY_RO(a):
        raise ValueError("optimiser kernel: arrays must be C-contiguous, aligned and in this "
                         "machine's byte order")
    if written and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError("optimiser kernel: an array to update is read-only")
    if a is not grad and (type_num != cnp.PyArray_TYPE(grad) or a.size != grad.size):
        raise ValueError(f"optimiser kernel: an array of {a.size} {a.dtype} beside a "
                         f"gradient of {grad.size} {grad.dtype}")
    return cnp.PyArray_DATA(a) if a.size else <void*>&EMPTY


cdef run(Rule rule, Slots slots, Hyper h):
    with nogil:
        update_all(rule, slots.slots, slots.count, &h)


def descent(values, grads, double lr):
    """p -= lr g for every parameter."""
    cdef Hyper h
    h.lr = lr
    run(DESCENT, Slots(grads, values), h)


def momentum(values, grads, velocities, double lr, double rho):
    """v = rho v - lr g; p += v for every parameter."""
    cdef Hyper h
    h.lr, h.rho = lr, rho
    run(MOMENTUM, Slots(grads, values, (velocities,)), h)


def nesterov(values, grads, velocities, double lr, double rho):
    """v' = rho v - lr g; p += rho v' - lr g for every parameter."""
    cdef Hyper h
    h.lr, h.rho = lr, rho
    run(NESTEROV, Slots(grads, values, (velocities,)), h)


def rmsprop(values, grads, mean_squares, double lr, double rho, double eps):
    """a = rho a + (1 - rho) g²; p -= lr g / (√a + eps) for every parameter."""
    cdef Hyper h
    h.lr, h.rho, h.eps = lr, rho, eps
    run(RMSPROP, Slots(grads, values, (mean_squares,)), h)


def adam(values, grads, first_moments, second_moments, steps, double lr, double beta1,
         double beta2, double eps, double weight_decay=0.0):
    """Adam with bias correction, or AdamW's decoupled weight decay when weight_decay > 0.
    `steps` holds each parameter's step count t including this step (1 on the first)."""
    cdef Hyper h
    h.lr, h.beta1, h.beta2, h.eps, h.weight_decay = lr, beta1, beta2, eps, weight_decay
    run(ADAM, Slots(grads, values, (first_moments, second_moments), steps), h)


def clip_value(grads, outs, double bound):
    """outs[i] = grads[i] clipped to [-bound, bound]."""
    cdef Hyper h
    h.bound = bound
    run(CLIP_VALUE, Slots(grads, outs), h)


def scale(grads, outs, double factor):
    """outs[i] = factor * grads[i]."""
    cdef Hyper h
    h.factor = factor
    run(SCALE, Slots(grads, outs), h)


def global_norm(grads):
    """The L2 norm of all gradients together, accumulated in double: inf if one is
    infinite, NaN if one is NaN."""
    cdef Slots slots = Slots(grads)
    cdef double norm
    with nogil:
        norm = global_l2_norm(slots.slots, slots.count)
    return norm
