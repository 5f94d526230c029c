"""model_ops: model versioning and model operations built on Dagster, Delta Lake and a content-addressed store.

The packages below ``defs/`` and ``definitions.py`` never import Dagster: ``model_ops.registry`` and
``model_ops.artifacts`` are usable as a plain library (``from model_ops.registry import Registry``).
Downstream code loads a registered model with ``model_ops.load("models:/NAME@champion")`` (see ``loading.py``).
"""

import atexit
import os
import sys

__version__ = "0.1.0"

# The Delta engine's own allocator keeps what a large write freed resident for the life of the process (half a
# GB per million rows written here), on top of the fit that follows; purge freed pages at once instead. Read when
# the engine loads, so it is set before anything imports it; a value of the user's own is kept.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

# Imported on first use, so ``import model_ops`` stays cheap (and Dagster-free for library users).
_LAZY = {"load": "model_ops.loading", "LoadedModel": "model_ops.loading"}

# How long interpreter exit waits for Arrow's threads to finish what they still hold (normally a few milliseconds).
ARROW_DRAIN_SECONDS = 10.0
# Arrow's process-wide thread pools and their task counts (libarrow's C++ API, Itanium-mangled: Linux and macOS).
_ARROW_POOLS = ("_ZN5arrow8internal16GetCpuThreadPoolEv", "_ZN5arrow2io8internal15GetIOThreadPoolEv")
_ARROW_NUM_TASKS = "_ZN5arrow8internal10ThreadPool11GetNumTasksEv"


def __getattr__(name: str) -> object:
    """``model_ops.ModelComponent`` (what ``type:`` in a ``defs.yaml`` names) without importing Dagster for library
    users: the Dagster layer is imported only when the component is asked for. ``load`` and ``LoadedModel`` are
    imported on first use too."""
    if name == "ModelComponent":
        from model_ops.defs.component import ModelComponent

        return ModelComponent
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model_ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "ModelComponent", *_LAZY])


def _drain_arrow_threads(timeout: float = ARROW_DRAIN_SECONDS) -> None:
    """At interpreter exit, before the interpreter starts finalizing: wait (the GIL released) until Arrow's thread
    pools have no task left.

    The registry reads its Delta tables through the Delta engine's Python filesystem, so Arrow's worker threads hold
    Python file objects, and a scan returns before its workers have released them all (about one read in four
    leaves some behind for a few milliseconds). A worker that releases one once the interpreter is finalizing must
    take the GIL; Python then ends that thread in the middle of a C++ destructor, and the process aborts
    ("terminate called without an active exception", exit 134) after the caller's script finished normally. Once
    the pools are idle no worker holds anything of Python's, so finalization cannot meet one. Cyclic garbage is
    collected first, so that what it releases into Arrow is released while Python can still run it."""
    if "pyarrow" not in sys.modules:
        return
    import gc
    import time

    gc.collect()
    counters = _arrow_task_counters()
    deadline = time.monotonic() + timeout
    while counters and any(count() > 0 for count in counters) and time.monotonic() < deadline:
        time.sleep(0.001)


def _arrow_task_counters() -> list:  # type: ignore[type-arg]
    """One callable per Arrow thread pool (CPU and I/O) giving its number of running or queued tasks, from the
    libarrow pyarrow has loaded; empty where that library or its symbols cannot be found (e.g. on Windows)."""
    import ctypes
    import glob

    pyarrow = sys.modules.get("pyarrow")
    directory = os.path.dirname(getattr(pyarrow, "__file__", None) or "")
    candidates = sorted(glob.glob(os.path.join(directory, "libarrow.so.*")), key=len)
    candidates += sorted(glob.glob(os.path.join(directory, "libarrow.*.dylib")), key=len)
    for path in candidates[:1]:
        try:
            library = ctypes.CDLL(path)  # the copy already loaded: dlopen returns its handle
            num_tasks = getattr(library, _ARROW_NUM_TASKS)
            num_tasks.argtypes, num_tasks.restype = [ctypes.c_void_p], ctypes.c_int
            pools = []
            for name in _ARROW_POOLS:
                get_pool = getattr(library, name)
                get_pool.argtypes, get_pool.restype = [], ctypes.c_void_p
                pools.append(get_pool())
        except (OSError, AttributeError):
            return []
        return [lambda pool=pool: num_tasks(pool) for pool in pools if pool]
    return []


atexit.register(_drain_arrow_threads)
