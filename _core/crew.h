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
 * What a shared task costs beyond half its work (Xeon with AVX-512, 2 vCPUs; rdtsc around
 * crew_run over RNN and LSTM 32,128,32 layers' recorded steps): posting it 0.11-0.16 µs;
 * the helper begins 0.22-0.28 µs after the post, and is seen done 0.25-0.36 µs after it
 * ends (timed on a copy whose caller spun without pauses and took the lock only for a
 * sleeping helper); its part runs 2-9% longer than the caller's, most of that in its first
 * reads of what the caller has just written (the task's description and buffers: 0.23 µs
 * more than the caller before its product starts). About 1 µs a task, 7% of a stepwise
 * training step there. A task's rows given unevenly, 17 of 32 to the caller, did not make
 * the steps faster (bench/, alternate processes: RNN 0.976, LSTM 1.011, GRU 1.022 of the
 * time).
 *
 * One caller at a time: a thread that finds the crew busy runs its task alone, with the
 * same result (each part writes its own share). A caller may also hold the crew for a
 * while and hand the helper work to do in the background meanwhile (crew_hold, crew_post,
 * crew_release: a backward pass's weight gradients, blas.pyx). The crew has as many members as
 * RECUR_NUM_THREADS allows (default: 2 where the process may run on 2 CPUs or more), and
 * the helper keeps off its caller's CPU (crew_keep_apart). After fork() the child has no
 * helper; crew_forget_after_fork resets the state so that it starts its own. */
#ifndef RECUR_CREW_H
#define RECUR_CREW_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define CREW_SPIN_NS 1000000L     /* 1 ms: longer than the Python between two products */
#define CREW_CHECK_SPINS 256      /* pauses between two looks at who holds which CPU */

typedef void (*crew_task)(void* arg, int part, int parts);

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_ulong posted;          /* generation of the latest task */
    atomic_ulong started;         /* generation the helper began last */
    atomic_ulong finished;        /* generation the helper completed last; equal to
                                     `posted` whenever the crew is not busy */
    atomic_int busy;              /* a caller holds the crew */
    atomic_int caller_cpu;        /* where the latest caller posted from, and where the */
    atomic_int helper_cpu;        /*   helper last looked (crew_cpu) */
    int state;                    /* 0 not started, 1 running, -1 one thread only */
    int sleeping;                 /* the helper waits on `wake` (under `lock`) */
    crew_task task;
    void* arg;
} crew = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

/* Set in the thread that holds the crew for work its helper does in the background
 * (crew_post), until crew_release. */
static _Thread_local int crew_holding;
/* Set while this thread's tasks should run alone (crew_keep_alone). */
static _Thread_local int crew_declined;
/* Set while this thread runs a part of a shared task, and always in the helper. A task
 * nested in it (a recurrence's rows, shared by the crew, run their steps' products) runs
 * alone: the crew is busy with the task around it, and asking anyway, a compare-and-swap on
 * the word both threads asked at every step, moved its cache line between the cores twice
 * a step (bench/, alternate processes, two threads: LSTM 32,64,16,50 inference 0.271 ->
 * 0.258 ms; RNN and GRU within noise). */
static _Thread_local int crew_in_task;

static inline void crew_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long crew_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

#if defined(__linux__) && defined(__GLIBC__)
extern int sched_getcpu(void);    /* glibc's, declared only under _GNU_SOURCE */
#endif

/* The CPU this thread runs on, -1 where that is unknown. glibc reads it from memory the
 * kernel keeps per thread (rseq), a few nanoseconds. */
static inline int crew_cpu(void)
{
#if defined(__linux__) && defined(__GLIBC__)
    return sched_getcpu();
#else
    return -1;
#endif
}

/* Whether a waiting caller should offer its CPU to the helper: when both are on this CPU
 * (pure spinning would then hold the helper off for a whole time slice), or when that
 * cannot be told. Offered regardless, every few microseconds, it cost: on a Xeon 10% of
 * the hand-overs of empty tasks took 7 µs instead of 0.3. */
static inline int crew_beside(int other_cpu)
{
    int cpu = crew_cpu();
    return cpu < 0 || other_cpu < 0 || cpu == other_cpu;
}

/* Moves the helper off the CPU of the thread it works with. A woken thread often lands
 * beside its waker, and the kernel's load balancing took about 50 ms to separate the
 * two, every hand-over meanwhile a context switch (Xeon: 6000 hand-overs at 8 µs before
 * the first at 0.3). Leaving the shared CPU out of its affinity moves the helper at once;
 * its own affinity comes back at once too, and it stays where it went. */
static void crew_move_off(int cpu)
{
#if defined(__linux__) && defined(CPU_SET)
    cpu_set_t allowed, elsewhere;
    if (cpu >= 0 && cpu < CPU_SETSIZE && sched_getaffinity(0, sizeof allowed, &allowed) == 0) {
        elsewhere = allowed;
        CPU_CLR(cpu, &elsewhere);
        if (CPU_COUNT(&elsewhere) > 0 && sched_setaffinity(0, sizeof elsewhere, &elsewhere) == 0) {
            sched_setaffinity(0, sizeof allowed, &allowed);
            return;
        }
    }
#else
    (void)cpu;
#endif
    sched_yield();
}

/* The helper, spinning (`idle`) or about to work: off its caller's CPU if it finds itself
 * there. Where it cannot tell, it offers its CPU now and then while it spins. */
static inline void crew_keep_apart(int idle)
{
    int cpu = crew_cpu();
    if (cpu < 0) {
        if (idle) sched_yield();
    } else if (cpu == atomic_load_explicit(&crew.caller_cpu, memory_order_relaxed)) {
        crew_move_off(cpu);
        cpu = crew_cpu();
    }
    /* Written only when it changed: the caller polls this cache line while it waits. */
    if (cpu != atomic_load_explicit(&crew.helper_cpu, memory_order_relaxed))
        atomic_store_explicit(&crew.helper_cpu, cpu, memory_order_relaxed);
}

static void* crew_helper(void* unused)
{
    /* Not `posted`: the first task may be posted before this thread gets to run. */
    unsigned long seen = atomic_load_explicit(&crew.finished, memory_order_acquire);
    (void)unused;
    crew_in_task = 1;
    for (;;) {
        unsigned long generation;
        long idle_since = crew_now_ns();
        unsigned spins = 0;
        while ((generation = atomic_load_explicit(&crew.posted, memory_order_acquire)) == seen) {
            crew_relax();
            if (++spins % CREW_CHECK_SPINS) continue;
            crew_keep_apart(1);
            if (crew_now_ns() - idle_since > CREW_SPIN_NS) {
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
        crew_keep_apart(0);
        atomic_store_explicit(&crew.started, generation, memory_order_release);
        crew.task(crew.arg, 1, 2);
        atomic_store_explicit(&crew.finished, generation, memory_order_release);
    }
    return NULL;
}

static void crew_forget_after_fork(void)
{
    crew_holding = 0;
    pthread_mutex_init(&crew.lock, NULL);
    pthread_cond_init(&crew.wake, NULL);
    atomic_store(&crew.started, atomic_load(&crew.posted));
    atomic_store(&crew.finished, atomic_load(&crew.posted));
    atomic_store(&crew.busy, 0);
    crew.state = 0;
    crew.sleeping = 0;
}

/* Whether this process may use a second thread: RECUR_NUM_THREADS=1 says no, and so does
 * a machine with one CPU or a process allowed only one (taskset, a container's cpuset),
 * where the two threads would take turns on it (RNN 32,128,32, one cell's step: 32 µs,
 * 15 in the calling thread alone). */
static int crew_wanted(void)
{
    const char* setting = getenv("RECUR_NUM_THREADS");
    if (setting != NULL && *setting != '\0' && atoi(setting) <= 1) return 0;
#if defined(__linux__) && defined(CPU_SET)
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) return CPU_COUNT(&allowed) >= 2;
#endif
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

/* Declines (or accepts again) the helper for this thread's tasks; returns the previous
 * setting. A task's parts share its data between two cores' caches; for a small task that
 * is shared anew on every call, moving it costs more than the second core saves. */
static int crew_keep_alone(int alone)
{
    int was = crew_declined;
    crew_declined = alone;
    return was;
}

/* Takes the crew for this thread, starting the helper on first use; 0 where the process
 * runs on one thread or another caller holds it. */
static int crew_take(void)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&crew.busy, &expected, 1)) return 0;
    if (crew.state == 0) crew.state = crew_start() ? 1 : -1;
    if (crew.state < 0) {
        atomic_store(&crew.busy, 0);
        return 0;
    }
    return 1;
}

/* Whether the helper has finished every task posted to it. */
static inline int crew_helper_idle(void)
{
    return atomic_load_explicit(&crew.finished, memory_order_acquire)
           == atomic_load_explicit(&crew.posted, memory_order_acquire);
}

/* Hands task(arg, 1, 2) to the helper; returns its generation. */
static unsigned long crew_hand_over(crew_task task, void* arg)
{
    unsigned long generation;
    crew.task = task;
    crew.arg = arg;
    atomic_store_explicit(&crew.caller_cpu, crew_cpu(), memory_order_relaxed);
    generation = atomic_fetch_add_explicit(&crew.posted, 1, memory_order_acq_rel) + 1;
    pthread_mutex_lock(&crew.lock);
    if (crew.sleeping) pthread_cond_signal(&crew.wake);
    pthread_mutex_unlock(&crew.lock);
    return generation;
}

/* Waits for the helper to finish the task of this generation. */
static void crew_wait(unsigned long generation)
{
    /* A helper that has not begun yet may be waiting for this very CPU. */
    for (unsigned spins = 1;
         atomic_load_explicit(&crew.finished, memory_order_acquire) != generation; spins++) {
        crew_relax();
        if (spins % CREW_CHECK_SPINS == 0
                && (atomic_load_explicit(&crew.started, memory_order_acquire) != generation
                    || crew_beside(atomic_load_explicit(&crew.helper_cpu,
                                                        memory_order_relaxed))))
            sched_yield();
    }
}

/* Runs task(arg, part, parts) for every part: split in two with the helper when `split` is
 * set, this thread has not declined it and the crew is free, else task(arg, 0, 1) in the
 * calling thread. A thread holding the crew (crew_post) splits while the helper is idle. */
static void crew_run(crew_task task, void* arg, int split)
{
    unsigned long generation;
    if (!split || crew_declined || crew_in_task
            || (crew_holding ? !crew_helper_idle() : !crew_take())) {
        task(arg, 0, 1);
        return;
    }
    generation = crew_hand_over(task, arg);
    crew_in_task = 1;
    task(arg, 0, 2);
    crew_in_task = 0;
    crew_wait(generation);
    if (!crew_holding) atomic_store(&crew.busy, 0);
}

/* Takes the crew for this thread until crew_release, for tasks it hands the helper to run
 * in the background (crew_post); its own tasks meanwhile split whenever the helper is idle
 * (crew_run), else run alone. 0 where it cannot: one thread only, the helper declined or
 * already at work for this thread, or another caller holding the crew. */
static int crew_hold(void)
{
    if (crew_holding) return 1;
    if (crew_declined || crew_in_task || !crew_take()) return 0;
    crew_holding = 1;
    return 1;
}

static int crew_holds(void)
{
    return crew_holding;
}

/* One pause of a thread waiting for the helper's work, `spins` pauses so far: every few
 * microseconds it offers its CPU where the helper may be waiting for that very CPU. */
static void crew_pause(unsigned long spins)
{
    crew_relax();
    if (spins % CREW_CHECK_SPINS == 0
            && crew_beside(atomic_load_explicit(&crew.helper_cpu, memory_order_relaxed)))
        sched_yield();
}

/* Gives the helper task(arg, 1, 2) to run in the background while this thread, which holds
 * the crew, goes on; 0 (nothing handed over) while the helper is busy with the last one. */
static int crew_post(crew_task task, void* arg)
{
    if (!crew_holding || !crew_helper_idle()) return 0;
    crew_hand_over(task, arg);
    return 1;
}

/* Waits for the helper's background task, if any, and frees the crew. */
static void crew_release(void)
{
    if (!crew_holding) return;
    crew_wait(atomic_load_explicit(&crew.posted, memory_order_acquire));
    crew_holding = 0;
    atomic_store(&crew.busy, 0);
}

/* Units of work [0, n) that a task's parts claim as they go rather than split in halves
 * up front. The two cores of a virtual machine rarely run at one speed: each drifts by up
 * to a third, independently, over tens of milliseconds (other guests share the physical
 * cores), so a task halved in advance ends when the slower half does. Part 0 claims from
 * the front and part 1 from the back, so a part keeps working on the same end of the data
 * from one call to the next, and only the units where they meet go to whichever part gets
 * there first (Zen 3 EPYC, 2 vCPUs, float32 1024³ on the panels, medians of 100
 * alternating runs in one process: halves 117-124 GFLOP/s, the slower half taking
 * 1.19-1.29 times the faster one's time on average; 32 claimed units of rows 132-143).
 * Both ends live in one word, so a claim is one compare-and-swap. */
typedef struct {
    _Atomic unsigned long long ends;   /* back << 32 | front: units [front, back) are free */
} crew_claims;

static inline void crew_claims_reset(crew_claims* claims, long units)
{
    atomic_store_explicit(&claims->ends, (unsigned long long)units << 32,
                          memory_order_relaxed);
}

/* The next unit for `part` (0 takes the lowest free one, any other part the highest), or
 * -1 once none is left. */
static inline long crew_claim(crew_claims* claims, int part)
{
    unsigned long long ends = atomic_load_explicit(&claims->ends, memory_order_relaxed);
    for (;;) {
        unsigned long long front = ends & 0xffffffffULL, back = ends >> 32;
        unsigned long long claimed;
        long unit;
        if (front >= back) return -1;
        if (part == 0) {
            claimed = ends + 1;
            unit = (long)front;
        } else {
            claimed = ends - (1ULL << 32);
            unit = (long)back - 1;
        }
        if (atomic_compare_exchange_weak_explicit(&claims->ends, &ends, claimed,
                                                  memory_order_relaxed, memory_order_relaxed))
            return unit;
    }
}

/* The helper's share of a task whose units are divided before it starts and cannot move
 * once it runs: a recurrence's batch rows, each of which a part carries through every
 * step. Claiming (above) cannot even out the cores' drift there, so each such task is
 * divided by what the last ones measured: the speeds at which the two parts got through
 * their units, in units a nanosecond from the hand-over to each part's end. Divided so,
 * the parts end together, where a task divided in halves ended when the slower half did.
 * On a Zen 5 EPYC's 2 vCPUs each core in turn ran ~35% slower for tens of milliseconds,
 * the two uncorrelated (one-thread processes on both CPUs at once, LSTM 32,64,8,50
 * inference timed in 10 ms windows: -0.07), and even at one speed the helper's half took
 * 17% longer (165 µs against 141, LSTM 32,64,16,50 inference: its rows' inputs and
 * outputs come from and go to the caller's cache). Blocks of calls divided in halves and
 * by speeds, alternated in one process: there, with the helper's core slow, 230 -> 187
 * µs (a share of 0.37); call times 0.95 of the halves' on average; GRU 32,128,32,100
 * inference 1.535 -> 1.436 ms (medians over 30 s), LSTM 64,256,64,100 13.65 -> 13.43.
 * The estimate moves half way to each measurement: a slow spell lasts from one task to
 * tens of them. Pinned (for the tests), it stays where it was set. Shares are in
 * 1/CREW_SHARE_ONE. */
#define CREW_SHARE_ONE 4096
static _Atomic int crew_helper_share = CREW_SHARE_ONE / 2;
static _Atomic int crew_share_pinned;

/* Where the helper's units begin among `units`, each part keeping at least `least`. */
static inline long crew_balanced_split(long units, long least)
{
    long share = atomic_load_explicit(&crew_helper_share, memory_order_relaxed);
    long split = units - (units * share + CREW_SHARE_ONE / 2) / CREW_SHARE_ONE;
    if (split > units - least) split = units - least;
    if (split < least) split = least;
    return split;
}

/* Notes a divided task's parts: units [0, first) went to the calling thread, which ended
 * `ns0` after the hand-over, the rest to the helper, which ended `ns1` after it. */
static inline void crew_note_split(long first, long units, long ns0, long ns1)
{
    double speed0, speed1;
    int share, measured;
    if (atomic_load_explicit(&crew_share_pinned, memory_order_relaxed)) return;
    if (first <= 0 || first >= units || ns0 <= 0 || ns1 <= 0) return;
    speed0 = (double)first / (double)ns0;
    speed1 = (double)(units - first) / (double)ns1;
    measured = (int)(CREW_SHARE_ONE * speed1 / (speed0 + speed1) + 0.5);
    share = atomic_load_explicit(&crew_helper_share, memory_order_relaxed);
    share += (measured - share) / 2;
    /* Within a quarter and three quarters: one part's long stall (a preemption) should
     * not hand the next task all to the other. */
    if (share < CREW_SHARE_ONE / 4) share = CREW_SHARE_ONE / 4;
    if (share > 3 * CREW_SHARE_ONE / 4) share = 3 * CREW_SHARE_ONE / 4;
    atomic_store_explicit(&crew_helper_share, share, memory_order_relaxed);
}

static inline int crew_share(void)
{
    return atomic_load_explicit(&crew_helper_share, memory_order_relaxed);
}

/* Pins the helper's share at `share` (of CREW_SHARE_ONE), or with a negative value lets it
 * follow the measurements again, from an even split; returns the share until now. */
static inline int crew_pin_share(int share)
{
    int was = atomic_load_explicit(&crew_helper_share, memory_order_relaxed);
    atomic_store_explicit(&crew_share_pinned, share >= 0, memory_order_relaxed);
    atomic_store_explicit(&crew_helper_share, share >= 0 ? share : CREW_SHARE_ONE / 2,
                          memory_order_relaxed);
    return was;
}

#endif
