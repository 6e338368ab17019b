/* Memory for recur's working buffers: the tape's arenas and a recurrent layer's block.
 *
 * Every block starts on a cache line, since the panel kernel's widest vectors (64 bytes with
 * AVX-512) straddle two lines at malloc's 16-byte alignment. A block of MBs, such as a
 * layer's packed weights, which every step of a sequence streams again, also asks the
 * kernel for 2 MB pages: on 4 KB ones the stream misses the TLB page after page (bench/:
 * LSTM 128,512,64,50 inference, 6 MB of block, 33-35 ms on 4 KB pages, 32.6-32.9 on 2 MB
 * ones; a loop of its steps in C alone ran 10% faster). Linux grants them only to
 * ranges advised with MADV_HUGEPAGE where transparent huge pages are set to "madvise";
 * elsewhere the advice is ignored and the block behaves as before. free() releases all. */
#ifndef RECUR_MEMORY_H
#define RECUR_MEMORY_H

#include <stddef.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define CACHE_LINE_BYTES 64
#define HUGE_PAGE_BYTES ((size_t)2 << 20)
/* From this size on a block is rounded up to whole huge pages (under 2 MB more). */
#define HUGE_BLOCK_MIN_BYTES (HUGE_PAGE_BYTES)

static void* aligned_block(size_t nbytes)
{
    void* block = NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (nbytes >= HUGE_BLOCK_MIN_BYTES) {
        size_t rounded = (nbytes + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
        if (posix_memalign(&block, HUGE_PAGE_BYTES, rounded) != 0) return NULL;
        madvise(block, rounded, MADV_HUGEPAGE);   /* advice: failure changes nothing */
        return block;
    }
#endif
    if (posix_memalign(&block, CACHE_LINE_BYTES, nbytes > 0 ? nbytes : 1) != 0) return NULL;
    return block;
}

/* What each of a thread's buffers holds (thread_buffer). */
enum {
    BUFFER_PACKED,             /* an operand packed for one product (blas.pyx) */
    BUFFER_STAGED,             /* deferred products' operands stacked (deferred.h) */
    BUFFER_TRANSPOSED,         /* a weight gradient's transpose before it is added (blas.pyx) */
    BUFFER_LAYER,              /* a recurrent layer's working memory in inference, and a
                                  single step's scratch in the backward pass (ops_rnn) */
    BUFFER_STEP,               /* a recorded step's scratch within one part (ops_rnn) */
    BUFFER_HALF_SUM,           /* a sequence's second half's weight gradient, before it is
                                  added (ops_rnn; a head's: blas.pyx) */
    BUFFER_OUTPUT_GRADIENT,    /* a step's rows of a sequence's output gradient computed
                                  from the product standing for it (ops_rnn) */
    THREAD_BUFFERS
};

/* This thread's buffer for one purpose, grown to the largest request and kept: a training
 * or inference loop asks for the same sizes every step, and fresh memory would fault its
 * pages in (and the kernel zero them) again each time. Valid until this thread's next
 * request for the same purpose; NULL when memory runs out (callers fall back to a path
 * that needs none, or raise MemoryError). */
static void* thread_buffer(int purpose, size_t nbytes)
{
    static _Thread_local void* buffers[THREAD_BUFFERS];
    static _Thread_local size_t capacities[THREAD_BUFFERS];
    if (nbytes == 0) nbytes = 1;          /* a layer may need no memory: still a buffer */
    if (nbytes > capacities[purpose]) {
        void* grown = aligned_block(nbytes);
        if (grown == NULL) return NULL;
        free(buffers[purpose]);
        buffers[purpose] = grown;
        capacities[purpose] = nbytes;
    }
    return buffers[purpose];
}

#endif
