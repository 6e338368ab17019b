/* This thread's deferred weight-gradient products (blas.pyx: defer_product).
 *
 * A recurrent layer run step by step leaves one tape node per step, and each node's
 * backward adds Aᵀ B to its weights' gradient with only the batch as the depth K: the
 * whole gradient, often MBs, read and written again for a thin product, step after step.
 * Deferred, the steps' operands A (K x M) and B (K x N) wait here, segment by segment, until
 * enough rows have gathered; one product with the sum of their depths then updates the
 * gradient once. The operands stay valid: they are tape buffers and values kept until the
 * backward pass ends, and the pass flushes everything before it ends.
 *
 * Plain storage: blas.pyx decides when to defer and when to flush, and runs the products. */
#ifndef RECUR_DEFERRED_H
#define RECUR_DEFERRED_H

#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include "memory.h"

#define DEFER_SEGMENTS 64      /* steps gathered for one gradient at most */
#define DEFER_PRODUCTS 8       /* gradients with products waiting at once */

typedef struct {
    const void* A;             /* K x M, row stride lda */
    const void* B;             /* K x N, row stride ldb */
    int lda, ldb, K;
} DeferredSegment;

typedef struct {
    void* C;                   /* M x N, row stride ldc: C += Aᵀ B over every segment */
    int M, N, ldc, is_f64;
    int K;                     /* the segments' total depth */
    int background;            /* may run in the crew's helper (blas.pyx: queue_product) */
    int n_segments;
    DeferredSegment segments[DEFER_SEGMENTS];
} DeferredProduct;

typedef struct {
    int n_products;
    DeferredProduct products[DEFER_PRODUCTS];
} Deferrals;

/* NULL when memory runs out (the caller then computes at once). */
static Deferrals* thread_deferrals(void)
{
    static _Thread_local Deferrals* deferrals = NULL;
    if (deferrals == NULL) deferrals = (Deferrals*)calloc(1, sizeof(Deferrals));
    return deferrals;
}

static DeferredProduct* deferred_product(Deferrals* d, int i)
{
    return &d->products[i];
}

static const DeferredSegment* deferred_segment(const DeferredProduct* p, int s)
{
    return &p->segments[s];
}

/* The bytes an M x N gradient with row stride ldc spans, from its first value to its last:
 * its rows may be strided, and the whole extent is conservative and cheap. */
static size_t deferred_extent(int M, int N, int ldc, int is_f64)
{
    return ((size_t)(M - 1) * ldc + N) * (is_f64 ? sizeof(double) : sizeof(float));
}

/* Whether p's C overlaps bytes [lo, hi). */
static int deferred_writes(const DeferredProduct* p, const char* lo, const char* hi)
{
    const char* c = (const char*)p->C;
    return c < hi && lo < c + deferred_extent(p->M, p->N, p->ldc, p->is_f64);
}

/* Index of the first waiting product whose C overlaps bytes [lo, hi), or -1. */
static int deferred_overlapping(const Deferrals* d, const char* lo, const char* hi)
{
    for (int i = 0; i < d->n_products; i++)
        if (deferred_writes(&d->products[i], lo, hi)) return i;
    return -1;
}

/* The product waiting for C with these sizes, added if new; -1 when all slots are taken. */
static int deferred_slot(Deferrals* d, void* C, int M, int N, int ldc, int is_f64)
{
    for (int i = 0; i < d->n_products; i++) {
        DeferredProduct* p = &d->products[i];
        if (p->C == C && p->M == M && p->N == N && p->ldc == ldc && p->is_f64 == is_f64)
            return i;
    }
    if (d->n_products == DEFER_PRODUCTS) return -1;
    DeferredProduct* p = &d->products[d->n_products];
    p->C = C; p->M = M; p->N = N; p->ldc = ldc; p->is_f64 = is_f64;
    p->K = 0; p->n_segments = 0;
    return d->n_products++;
}

static void deferred_append(DeferredProduct* p, const void* A, int lda, const void* B, int ldb,
                            int K)
{
    DeferredSegment* s = &p->segments[p->n_segments++];
    s->A = A; s->lda = lda; s->B = B; s->ldb = ldb; s->K = K;
    p->K += K;
}

/* Takes product i off the list into *out (the last one moves into its slot). */
static void deferred_take(Deferrals* d, int i, DeferredProduct* out)
{
    memcpy(out, &d->products[i], sizeof(DeferredProduct));
    d->n_products--;
    if (i != d->n_products)
        memcpy(&d->products[i], &d->products[d->n_products], sizeof(DeferredProduct));
}

/* Products handed to the crew's helper to run in the background while the backward pass
 * goes on (blas.pyx: queue_product). One thread holds the crew and queues at a time
 * (crew_post), so one queue serves the process. Jobs are numbered in the order queued;
 * either thread claims the next one to run, in order, and marks its slot with the job's
 * number when done. A job starts only once the earlier ones that write into its gradient
 * are done (blas.pyx: run_job), so the two threads never write one gradient at once. */
#define DEFER_QUEUE 8

typedef struct {
    DeferredProduct jobs[DEFER_QUEUE];
    _Atomic long queued;       /* jobs queued so far */
    _Atomic long claimed;      /* jobs claimed so far, by either thread */
    _Atomic long finished[DEFER_QUEUE];   /* per slot: the number of its last finished job */
    _Atomic int draining;      /* the helper's task is claiming jobs */
    long retired;              /* jobs below this number are known to be done (read and
                                  written only by the thread holding the crew) */
} DeferredQueue;

static DeferredQueue* deferred_queue(void)
{
    static DeferredQueue queue = {.finished = {-1, -1, -1, -1, -1, -1, -1, -1}};
    return &queue;
}

/* In a child after fork(): the jobs of a pass that another of the parent's threads was in
 * will never finish here (that thread and the helper are not in the child), and waiting
 * for them would hang the child's first pass. The child starts with an empty queue. */
static void deferred_forget_after_fork(void)
{
    DeferredQueue* q = deferred_queue();
    atomic_store(&q->queued, 0);
    atomic_store(&q->claimed, 0);
    for (int i = 0; i < DEFER_QUEUE; i++) atomic_store(&q->finished[i], -1);
    atomic_store(&q->draining, 0);
    q->retired = 0;
}

static void deferred_install_fork_handler(void)
{
    pthread_atfork(NULL, NULL, deferred_forget_after_fork);
}

static DeferredProduct* queued_job(DeferredQueue* q, long n)
{
    return &q->jobs[n % DEFER_QUEUE];
}

/* The number of the next unclaimed job, now claimed, or -1 when none waits. */
static long deferred_claim(DeferredQueue* q)
{
    long n = atomic_load(&q->claimed);
    while (n < atomic_load(&q->queued))
        if (atomic_compare_exchange_weak(&q->claimed, &n, n + 1)) return n;
    return -1;
}

/* The same, only if that job is number `last` or earlier. */
static long deferred_claim_upto(DeferredQueue* q, long last)
{
    long n = atomic_load(&q->claimed);
    while (n <= last && n < atomic_load(&q->queued))
        if (atomic_compare_exchange_weak(&q->claimed, &n, n + 1)) return n;
    return -1;
}

static long deferred_queued(DeferredQueue* q)
{
    return atomic_load(&q->queued);
}

/* Makes job number queued (its slot filled) claimable. */
static void deferred_publish(DeferredQueue* q)
{
    atomic_fetch_add(&q->queued, 1);
}

static int deferred_draining(DeferredQueue* q)
{
    return atomic_load(&q->draining);
}

static void deferred_set_draining(DeferredQueue* q, int draining)
{
    atomic_store(&q->draining, draining);
}

static int deferred_done(DeferredQueue* q, long n)
{
    return atomic_load_explicit(&q->finished[n % DEFER_QUEUE], memory_order_acquire) >= n;
}

static void deferred_mark_done(DeferredQueue* q, long n)
{
    atomic_store_explicit(&q->finished[n % DEFER_QUEUE], n, memory_order_release);
}

/* Copies p's segments one under another into this thread's staging buffers: A as K x M,
 * B as K x N (row strides M and N). 0, or -1 when memory runs out. */
static int deferred_stage(const DeferredProduct* p, void** A, void** B)
{
    size_t item = p->is_f64 ? sizeof(double) : sizeof(float);
    size_t a_bytes = (size_t)p->K * p->M * item, b_bytes = (size_t)p->K * p->N * item;
    size_t a_space = (a_bytes + 63) & ~(size_t)63;
    void* buffer = thread_buffer(BUFFER_STAGED, a_space + b_bytes);
    if (buffer == NULL) return -1;
    char* a = (char*)buffer;
    char* b = a + a_space;
    for (int s = 0; s < p->n_segments; s++) {
        const DeferredSegment* seg = &p->segments[s];
        for (int k = 0; k < seg->K; k++) {
            memcpy(a, (const char*)seg->A + (size_t)k * seg->lda * item, (size_t)p->M * item);
            memcpy(b, (const char*)seg->B + (size_t)k * seg->ldb * item, (size_t)p->N * item);
            a += (size_t)p->M * item;
            b += (size_t)p->N * item;
        }
    }
    *A = buffer;
    *B = (char*)buffer + a_space;
    return 0;
}

#endif
