"""Sets up malloc so XLA:CPU's per-step temporaries stay mapped between steps (`mmjax train`).

XLA's CPU runtime allocates a step's temporary buffers (hundreds of MB at the benchmark
shapes) on every call. glibc serves blocks above its mmap threshold with mmap and unmaps
them on free, so every step page-faults them in again (kernel time, ~10-20% of a CPU step).
`configure()` picks, by $MMJAX_MALLOC:

  auto (default)   tcmalloc where it is installed, else glibc (below)
  glibc            tune glibc in this process (`mallopt`: one arena, no mmap for large
                   blocks, no trimming); nothing to install, works on every glibc
  tcmalloc         re-execute with libtcmalloc_minimal preloaded (apt: libtcmalloc-minimal4)
  jemalloc         re-execute with libjemalloc preloaded (apt: libjemalloc2)
  system           leave malloc as it is

A preloaded library that is not installed leaves malloc as it is, with a note on stderr.
Memory: each keeps freed temporaries for reuse, so the host's resident memory settles a few
step-temporary blocks above the system malloc's (CLIP-S float32 on CPU, 722 MB of step
temporaries: system 1.8 GB, tcmalloc 2.2 GB, tuned glibc 3.9 GB after ~7 steps, then flat;
benchmarks/README.md), hence tcmalloc first. On GPU and TPU hosts the step's temporaries
live on the device and none of this matters.
Call it first thing in a command's main, before the first step runs.
"""

import ctypes
import ctypes.util
import os
import sys

ENV = "MMJAX_MALLOC"
LIBRARIES = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
CHOICES = ("auto", "glibc", "system") + tuple(LIBRARIES)
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def tune_glibc():
    """One arena, no mmap for large blocks, no trimming: freed temporaries stay in the heap
    for the next step. (Threads' arenas mmap any block over 64 MB whatever the threshold, so
    all threads share the main one.) Returns False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)])


def installed(name):
    """The path of lib`name` (a LIBRARIES key), or None."""
    return next(filter(None, map(ctypes.util.find_library, LIBRARIES[name])), None)


def preload(name):
    """Re-executes this process's command line with lib`name` preloaded, unless it is loaded
    already or not installed (then it returns, with a note on stderr for the latter)."""
    if name in os.environ.get("LD_PRELOAD", ""):
        return
    lib = installed(name)
    if lib is None:
        print(f"mmjax: {ENV}={name} but lib{name} is not installed; using the system malloc",
              file=sys.stderr)
        return
    env = dict(os.environ, LD_PRELOAD=" ".join(filter(None, [os.environ.get("LD_PRELOAD"), lib])))
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def configure(reexec=True):
    """Applies $MMJAX_MALLOC (default 'auto'); a preload re-executes the process, unless
    not `reexec` (mmjax called as a library, e.g. `cli.main([...])` from a test)."""
    choice = os.environ.get(ENV, "auto").lower()
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r} unknown; valid: {', '.join(CHOICES)}")
    if choice == "auto":
        choice = "tcmalloc" if reexec and installed("tcmalloc") else "glibc"
    if choice == "glibc":
        tune_glibc()
    elif choice in LIBRARIES and reexec:
        preload(choice)
