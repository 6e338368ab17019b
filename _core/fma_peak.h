/* The ceiling of float32 arithmetic on this machine: independent fused multiply-adds on
 * the widest vectors the build targets (the panel kernel's vec_f), with nothing to load or
 * store. A product of n multiply-adds takes at least n / this rate on the threads that ran
 * it, whatever its kernel; bench/ sets each missed target against it, to tell a target
 * that better code could reach from one that asks for more arithmetic than the cores do.
 *
 * FMA_PEAK_CHAINS accumulators, each one multiply-add after another: enough in flight to
 * cover the FMA's latency on every unit (4 cycles, 2 units: 8), and with the two constants
 * still within AVX2's 16 registers. GCC contracts `chain * scale + shift` into one FMA, as
 * it does the panel kernel's `acc += a * p`. */
#ifndef RECUR_FMA_PEAK_H
#define RECUR_FMA_PEAK_H

#include "panel_gemm.h"

#define FMA_PEAK_CHAINS 12

typedef struct {
    long rounds;             /* multiply-adds of each chain, in each part */
    int parts;               /* the parts that ran: 1 alone, 2 shared with the helper */
    float sums[2];           /* each part's chains summed, so that none is optimised away */
} fma_peak_job;

/* Multiply-adds on one part's chains (a crew task: every part runs the whole loop). */
static void fma_peak_part(void* arg, int part, int parts)
{
    fma_peak_job* job = (fma_peak_job*)arg;
    /* A factor just under 1 and a small shift keep the values finite and normal for any
     * number of rounds (each chain tends to shift / (1 - scale)). */
    const vec_f scale = (vec_f){0} + 0.999f;
    const vec_f shift = (vec_f){0} + 0.001f;
    vec_f chains[FMA_PEAK_CHAINS];
    float sum = 0;
    /* Starting values the compiler cannot see: from a constant start it proved one chain
     * already at its fixed point and dropped it from the loop. */
    for (int k = 0; k < FMA_PEAK_CHAINS; k++)
        chains[k] = (vec_f){0} + (float)(job->rounds % 7 + k + 2);
    for (long round = 0; round < job->rounds; round++)
        for (int k = 0; k < FMA_PEAK_CHAINS; k++) chains[k] = chains[k] * scale + shift;
    for (int k = 0; k < FMA_PEAK_CHAINS; k++) sum += chains[k][0];
    job->sums[part] = sum;
    if (part == 0) job->parts = parts;
}

/* Floating-point operations in one part's loop: a multiply and an add per lane. */
static inline double fma_peak_flops_per_part(long rounds)
{
    return 2.0 * LANES_f * FMA_PEAK_CHAINS * (double)rounds;
}

#endif
