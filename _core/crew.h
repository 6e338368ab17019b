/* A crew of two: the calling thread and one helper thread split a task between them.
 *
 * recur's matrix products are split by the crew rather than by the BLAS's thread pool. A
 * recurrent step's product is small (B = 32, H = 128 is 4 MFLOP, ~25 µs on one core) but
 * it comes T times in a row on the critical path, so a hand-over has to cost well under a
 * microsecond: the helper spins between tasks and only after CREW_SPIN_NS without work
 * sleeps on a condition variable, giving its core back. A second pool that spins too
 * (OpenBLAS keeps its threads spinning for a long while after a threaded call) would take
 * that core away on a 2-core machine, which is why recur's large products all come here.
 *
 * One caller at a time: a thread that finds the crew busy runs its task alone, with the
 * same result (each part writes its own share). The crew has as many members as
 * RECUR_NUM_THREADS allows (default: 2 where there are 2 CPUs or more). After fork() the
 * child has no helper; crew_forget_after_fork resets the state so that it starts its own. */
#ifndef RECUR_CREW_H
#define RECUR_CREW_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define CREW_SPIN_NS 1000000L     /* 1 ms: longer than the Python between two products */
#define CREW_YIELD_SPINS 256      /* pauses between two offers of the CPU (a few µs) */

typedef void (*crew_task)(void* arg, int part, int parts);

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_ulong posted;          /* generation of the latest task */
    atomic_ulong finished;        /* generation the helper completed last; equal to
                                     `posted` whenever the crew is not busy */
    atomic_int busy;              /* a caller holds the crew */
    int state;                    /* 0 not started, 1 running, -1 one thread only */
    int sleeping;                 /* the helper waits on `wake` (under `lock`) */
    crew_task task;
    void* arg;
} crew = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static inline void crew_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A spinning thread offers its CPU now and then: the scheduler may have put the thread it
 * waits for on the same CPU (a woken thread often lands beside its waker), and then pure
 * spinning would hold that thread off for a whole time slice. */
static inline void crew_offer_cpu(unsigned spins)
{
    if (spins % CREW_YIELD_SPINS == 0) sched_yield();
}

static inline long crew_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void* crew_helper(void* unused)
{
    /* Not `posted`: the first task may be posted before this thread gets to run. */
    unsigned long seen = atomic_load_explicit(&crew.finished, memory_order_acquire);
    (void)unused;
    for (;;) {
        unsigned long generation;
        long idle_since = crew_now_ns();
        unsigned spins = 0;
        while ((generation = atomic_load_explicit(&crew.posted, memory_order_acquire)) == seen) {
            crew_relax();
            crew_offer_cpu(++spins);
            if (spins % CREW_YIELD_SPINS == 0 && crew_now_ns() - idle_since > CREW_SPIN_NS) {
                pthread_mutex_lock(&crew.lock);
                crew.sleeping = 1;
                while ((generation = atomic_load(&crew.posted)) == seen)
                    pthread_cond_wait(&crew.wake, &crew.lock);
                crew.sleeping = 0;
                pthread_mutex_unlock(&crew.lock);
                break;
            }
        }
        seen = generation;
        crew.task(crew.arg, 1, 2);
        atomic_store_explicit(&crew.finished, generation, memory_order_release);
    }
    return NULL;
}

static void crew_forget_after_fork(void)
{
    pthread_mutex_init(&crew.lock, NULL);
    pthread_cond_init(&crew.wake, NULL);
    atomic_store(&crew.finished, atomic_load(&crew.posted));
    atomic_store(&crew.busy, 0);
    crew.state = 0;
    crew.sleeping = 0;
}

/* Whether this process may use a second thread: RECUR_NUM_THREADS=1 says no, and so does
 * a machine with one CPU. */
static int crew_wanted(void)
{
    const char* setting = getenv("RECUR_NUM_THREADS");
    if (setting != NULL && *setting != '\0' && atoi(setting) <= 1) return 0;
    return sysconf(_SC_NPROCESSORS_ONLN) >= 2;
}

static int crew_start(void)
{
    static int fork_handler_installed = 0;
    pthread_t thread;
    pthread_attr_t attr;
    int ok;
    if (!crew_wanted()) return 0;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    ok = pthread_create(&thread, &attr, crew_helper, NULL) == 0;
    pthread_attr_destroy(&attr);
    if (ok && !fork_handler_installed) {
        pthread_atfork(NULL, NULL, crew_forget_after_fork);
        fork_handler_installed = 1;
    }
    return ok;
}

/* Set while this thread's tasks should run alone (crew_keep_alone). */
static _Thread_local int crew_declined;

/* Declines (or accepts again) the helper for this thread's tasks; returns the previous
 * setting. A task's parts share its data between two cores' caches; for a small task that
 * is shared anew on every call, moving it costs more than the second core saves. */
static int crew_keep_alone(int alone)
{
    int was = crew_declined;
    crew_declined = alone;
    return was;
}

/* Runs task(arg, part, parts) for every part: split in two with the helper when `split` is
 * set, this thread has not declined it and the crew is free, else task(arg, 0, 1) in the
 * calling thread. */
static void crew_run(crew_task task, void* arg, int split)
{
    int expected = 0;
    unsigned long generation;
    if (!split || crew_declined
            || !atomic_compare_exchange_strong(&crew.busy, &expected, 1)) {
        task(arg, 0, 1);
        return;
    }
    if (crew.state == 0) crew.state = crew_start() ? 1 : -1;
    if (crew.state < 0) {
        atomic_store(&crew.busy, 0);
        task(arg, 0, 1);
        return;
    }
    crew.task = task;
    crew.arg = arg;
    generation = atomic_fetch_add_explicit(&crew.posted, 1, memory_order_acq_rel) + 1;
    pthread_mutex_lock(&crew.lock);
    if (crew.sleeping) pthread_cond_signal(&crew.wake);
    pthread_mutex_unlock(&crew.lock);
    task(arg, 0, 2);
    for (unsigned spins = 1;
         atomic_load_explicit(&crew.finished, memory_order_acquire) != generation; spins++) {
        crew_relax();
        crew_offer_cpu(spins);
    }
    atomic_store(&crew.busy, 0);
}

#endif
