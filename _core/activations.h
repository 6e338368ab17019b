/* float32 logistic and tanh over arrays, in place, a vector at a time: the gate activations
 * of the recurrent cells and Dense (fastmath.pxd, which finishes the last values of an
 * array and keeps the definitions these loops follow step for step).
 *
 * Written on vectors for one instruction pair. Both functions first clamp their argument
 * of exp to [-87, 88], so that 2ⁿ stays a normal float. As scalar selects, GCC vectorised
 * the clamp into three compares and three blends; min and max do it in two instructions,
 * and the compares and blends share AVX2's two FMA ports with the arithmetic that follows
 * (Zen 3, one thread, logistic over 8192 floats: 0.55 -> 0.42 ns a value); tanh's
 * argument, -2|v|, needs only the lower bound, a min of |v|. The operand order of min and
 * max passes a NaN through, as the selects did: with a NaN in either operand, x86's min
 * and max return the second. Everything else is the scalar code's expression, contracted
 * into FMAs alike, with exp's argument scaled as activation_exp_parts_times says: both give
 * the same values (compared for all 2³² float32 inputs, NaNs' payloads aside). */
#ifndef RECUR_ACTIVATIONS_H
#define RECUR_ACTIVATIONS_H

#include <stddef.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define ACTIVATION_BYTES 64
typedef __m512 activation_native;
typedef __mmask16 activation_mask;
#define activation_max _mm512_max_ps
#define activation_min _mm512_min_ps
#define activation_above(v, bound) _mm512_cmp_ps_mask(v, bound, _CMP_GT_OQ)
#define activation_blend(mask, otherwise, if_set) _mm512_mask_mov_ps(otherwise, mask, if_set)
#elif defined(__AVX__)
#include <immintrin.h>
#define ACTIVATION_BYTES 32
typedef __m256 activation_native;
typedef __m256 activation_mask;
#define activation_max _mm256_max_ps
#define activation_min _mm256_min_ps
#define activation_above(v, bound) _mm256_cmp_ps(v, bound, _CMP_GT_OQ)
#define activation_blend(mask, otherwise, if_set) _mm256_blendv_ps(otherwise, if_set, mask)
#endif

#ifdef ACTIVATION_BYTES
typedef float activation_vec __attribute__((vector_size(ACTIVATION_BYTES), aligned(4)));
typedef unsigned int activation_bits __attribute__((vector_size(ACTIVATION_BYTES)));
enum { ACTIVATION_LANES = ACTIVATION_BYTES / sizeof(float) };

/* fastmath's exp_parts of k·x for k = -1 or -2, returning q and setting *scale = 2ⁿ where
 * e^(kx) = 2ⁿ (1 + q), for an x already clamped so that kx lies in [-87, 88]. The
 * multiplication by k is folded into the constants rather than done: every intermediate
 * value here is exp_parts' own (on kx) divided by a power of k, and scaling by a power of
 * two rounds alike, so the result has the same bits. Vector operations for 16 values:
 * logistic 20 -> 19, tanh 24 -> 21 with its clamp and the negation it leaves out (Zen 4,
 * one thread, ns a value: logistic 0.289-0.295 -> 0.276-0.280, tanh 0.373-0.385 ->
 * 0.329-0.338). */
static inline __attribute__((always_inline)) activation_vec
activation_exp_parts_times(activation_vec x, const float k, activation_vec* scale)
{
    const float log2e = 1.4426950408889634f, ln2_hi = 0.693145751953125f;
    const float ln2_lo = 1.4286068203094173e-06f, shifter = 12582912.0f;     /* 1.5·2²³ */
    /* Taylor coefficients of eʳ - 1 = r (1 + r (1/2 + ...)), the j-th times kʲ: the
     * polynomial in r/k that equals exp_parts' in r. */
    const float k2 = k * k, k3 = k2 * k, k4 = k2 * k2;
    const float c1 = k, c2 = (float)(1 / 2.) * k2, c3 = (float)(1 / 6.) * k3;
    const float c4 = (float)(1 / 24.) * k4, c5 = (float)(1 / 120.) * k4 * k;
    const float c6 = (float)(1 / 720.) * k3 * k3, c7 = (float)(1 / 5040.) * k4 * k3;
    activation_vec shifted = x * (k * log2e) + shifter;
    activation_vec n = shifted - shifter;
    /* r / k, where r = kx - n ln2_hi - n ln2_lo. */
    activation_vec r = x - n * (ln2_hi / k) - n * (ln2_lo / k);
    activation_bits bits = ((activation_bits)shifted - 0x4B400000u + 127u) << 23;
    *scale = (activation_vec)bits;
    return r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))));
}
#endif

/* logistic over v[0, n) in whole vectors; returns how many values it did (none without
 * AVX), fastmath.pxd doing the rest. */
static size_t logistic_vectors(size_t n, float* v)
{
#ifdef ACTIVATION_BYTES
    /* -x in [-87, 88] */
    const activation_vec lowest = (activation_vec){0} - 88.0f;
    const activation_vec highest = (activation_vec){0} + 87.0f;
    size_t k = 0;
    for (; k + ACTIVATION_LANES <= n; k += ACTIVATION_LANES) {
        activation_vec clamped = (activation_vec)activation_min(
            (activation_native)highest,
            activation_max((activation_native)lowest, *(activation_native*)(v + k)));
        activation_vec scale, q = activation_exp_parts_times(clamped, -1.0f, &scale);
        *(activation_vec*)(v + k) = 1.0f / (1.0f + (scale + scale * q));
    }
    return k;
#else
    (void)n; (void)v;
    return 0;
#endif
}

/* tanh likewise, on |v|, then v's sign. With e = e^(-2|v|) = 2ⁿ (1 + q):
 *   tanh|v| = (1 - e) / (1 + e), the numerator computed as -(2ⁿq + (2ⁿ - 1)), which keeps
 *   its relative precision near 0;
 *   tanh|v| = 1 - 2e / (1 + e) above TANH_FAR, where only the last subtraction rounds much.
 * The first form alone put up to 2.5 ulps of 1 into a saturated tanh (its numerator and
 * denominator each round to ulps of 1), and the gradient 1 - tanh² carries tanh's error in
 * absolute terms: 2.5 ulps of 1 are 1.5% of 1 - tanh² at 6.1. Over all float32 inputs, the
 * two forms together are within 0.60 ulp of 1 from |v| = 2 on and 1.04 from 1 to 2
 * (before: 2.49 and 2.40), and within 2.29 ulps of tanh everywhere (before: 2.56). They
 * share one division: the lanes choose its numerator's offset, 2ⁿ or 2ⁿ - 1, and whether
 * 2w - 1 follows it (1 - 2w negated, negative like the first form's quotient, so that
 * taking v's sign clears the sign of either). 0.167 -> 0.188 ns a value (Zen 5, one
 * thread, 4096 values in cache). */
#define TANH_FAR 0.55f

static size_t tanh_vectors(size_t n, float* v)
{
#ifdef ACTIVATION_BYTES
    const activation_bits sign = (activation_bits){0} + 0x80000000u;
    const activation_vec highest = (activation_vec){0} + 43.5f;      /* -2|v| ≥ -87 */
    const activation_vec far_bound = (activation_vec){0} + TANH_FAR;
    size_t k = 0;
    for (; k + ACTIVATION_LANES <= n; k += ACTIVATION_LANES) {
        activation_vec x = *(activation_vec*)(v + k);
        activation_vec magnitude = (activation_vec)activation_min(
            (activation_native)highest, (activation_native)((activation_bits)x & ~sign));
        activation_vec scale, q = activation_exp_parts_times(magnitude, -2.0f, &scale);
        activation_mask far = activation_above((activation_native)magnitude,
                                               (activation_native)far_bound);
        activation_vec offset = (activation_vec)activation_blend(
            far, (activation_native)(scale - 1.0f), (activation_native)scale);
        activation_vec w = (scale * q + offset) / (scale * q + (scale + 1.0f));
        activation_vec t = (activation_vec)activation_blend(
            far, (activation_native)w, (activation_native)(w * 2.0f - 1.0f));
        *(activation_vec*)(v + k) = (activation_vec)(((activation_bits)t & ~sign)
                                                     | ((activation_bits)x & sign));
    }
    return k;
#else
    (void)n; (void)v;
    return 0;
#endif
}

#endif
