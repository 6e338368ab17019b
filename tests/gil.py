"""Shows that a computation releases the GIL: a heartbeat thread keeps running Python."""
import threading
import time


def longest_stall(run):
    """(longest pause of a Python heartbeat thread while `run()` runs, run's own duration
    alone). Holding the GIL through a kernel stalls the heartbeat for the whole kernel."""
    start = time.perf_counter()
    run()
    alone = time.perf_counter() - start
    gaps, done = [], threading.Event()

    def heartbeat():
        last = time.perf_counter()
        while not done.is_set():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = threading.Thread(target=heartbeat)
    beat.start()
    run()
    done.set()
    beat.join()
    return max(gaps), alone
