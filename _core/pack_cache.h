/* Weights packed once per backward pass (blas.pyx: packed_for_backward).
 *
 * A recurrent layer run step by step leaves one tape node per step, and each node's
 * backward multiplies by the same weights: dh = d_gates Wh for every step, dX = d_gates Wi
 * when the input needs a gradient. Read in place, Wh's columns sit a whole row apart for
 * the kernel's panels; a sequence node instead packs them once for all its steps. Here the
 * step nodes of one backward pass share one packing of each weight the same way, found by
 * its address and layout.
 *
 * Nothing can change a weight during a backward pass (it runs in C, with no user code),
 * and the tape keeps every input alive until the pass ends, so an address names one array
 * throughout. The tape empties the cache when a pass ends; the memory stays, since the next
 * training step packs the same weights again.
 *
 * Plain storage: blas.pyx packs, ops_rnn.pyx asks, tape.pyx forgets. */
#ifndef RECUR_PACK_CACHE_H
#define RECUR_PACK_CACHE_H

#include <stddef.h>
#include <stdlib.h>

#include "memory.h"

#define PACK_CACHE_ENTRIES 12  /* weights packed at once: up to three per layer (a GRU's Wh and
                                  its input weights in two parts), four layers */

typedef struct {
    const void* src;           /* Bmat[k][n] = src[k * k_stride + n * n_stride] */
    ptrdiff_t K, N, k_stride, n_stride;
    int is_f64;
    void* packed;              /* NULL while the entry is free */
    size_t capacity;           /* bytes of `memory`, kept from pass to pass */
    void* memory;
} PackedWeight;

typedef struct {
    int n_entries;             /* entries in use this pass */
    PackedWeight entries[PACK_CACHE_ENTRIES];
} PackCache;

static PackCache* thread_pack_cache(void)
{
    static _Thread_local PackCache cache;
    return &cache;
}

/* The packing of this operand made earlier in the pass, or NULL. */
static void* pack_cache_find(const PackCache* cache, const void* src, ptrdiff_t K,
                             ptrdiff_t N, ptrdiff_t k_stride, ptrdiff_t n_stride, int is_f64)
{
    for (int i = 0; i < cache->n_entries; i++) {
        const PackedWeight* e = &cache->entries[i];
        if (e->src == src && e->K == K && e->N == N && e->k_stride == k_stride
                && e->n_stride == n_stride && e->is_f64 == is_f64)
            return e->packed;
    }
    return NULL;
}

/* Memory of `nbytes` for a new entry, which the caller fills at once; NULL when every
 * entry is taken or memory runs out (the caller then reads the weights in place). */
static void* pack_cache_add(PackCache* cache, const void* src, ptrdiff_t K, ptrdiff_t N,
                            ptrdiff_t k_stride, ptrdiff_t n_stride, int is_f64,
                            size_t nbytes)
{
    if (cache->n_entries == PACK_CACHE_ENTRIES) return NULL;
    PackedWeight* e = &cache->entries[cache->n_entries];
    if (nbytes > e->capacity) {
        void* grown = aligned_block(nbytes);
        if (grown == NULL) return NULL;
        free(e->memory);
        e->memory = grown;
        e->capacity = nbytes;
    }
    e->src = src;
    e->K = K, e->N = N, e->k_stride = k_stride, e->n_stride = n_stride;
    e->is_f64 = is_f64;
    e->packed = e->memory;
    cache->n_entries++;
    return e->packed;
}

static void pack_cache_forget(PackCache* cache)
{
    for (int i = 0; i < cache->n_entries; i++) cache->entries[i].packed = NULL;
    cache->n_entries = 0;
}

#endif
