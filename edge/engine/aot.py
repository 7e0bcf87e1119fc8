"""The engine's kernels compiled ahead of time: built once on the gateway, loaded without numba.

numba compiles the kernels of kernels.py when a process first calls them, or loads them from
its on-disk cache; either way the process imports numba and LLVM, which hold about 120 MB of
resident memory and take most of a second to start. ``edge engine build`` compiles the same
kernels, from the same source, into a Python extension module (numba.pycc) in
``kernels_dir()``, and the engine loads that with no numba at all.

The module's name carries a digest of the files the kernels are built from (``SOURCES``), of
numpy's major version and of the CPU's instruction set, so a module built from other sources
or for another CPU is never loaded: after an upgrade, or on a box cloned from another's
image, the engine falls back to numba, and says so, until the module is built again. The
build is tuned for the CPU it runs on: build on the gateway itself (scripts/setup does).

Environment: ``EDGE_KERNELS=jit`` makes the engine use numba even when a built module exists
(to compare the two); ``EDGE_KERNELS_DIR`` sets where modules are built and looked for
(default: ``share/edge-gateway/kernels`` under the Python environment's prefix).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
# What the kernels are compiled from: kernels.py and what it compiles in (the detector, the
# function codes, the opcodes). numba's own cache is flushed on the same list (numba_cache.py).
SOURCES = [HERE / name for name in ("kernels.py", "detectors.py", "detector_state.py", "functions.py", "program.py")]
EXPORTS = ("run_batch", "tick", "init_state")


class Kernels(NamedTuple):
    run_batch: object
    tick: object
    init_state: object
    kind: str  # "ahead-of-time" or "jit"
    where: str  # the module's file, or why numba is used


def cpu_signature() -> str:
    """The machine and its CPU's feature flags (the build uses every instruction this CPU has)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def digest() -> str:
    """Digest of the kernels' sources, numpy's major version (the extension's ABI) and the CPU."""
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(f"numpy{np.__version__.split('.')[0]}\0{cpu_signature()}".encode())
    return h.hexdigest()


def module_name() -> str:
    return f"edge_kernels_{digest()[:16]}"


def kernels_dir() -> Path:
    configured = os.environ.get("EDGE_KERNELS_DIR")
    return Path(configured) if configured else Path(sys.prefix) / "share" / "edge-gateway" / "kernels"


def find(directory: Path | None = None) -> Path | None:
    """The built module for the current sources in ``directory``, if there is one."""
    directory = kernels_dir() if directory is None else directory
    name = module_name()
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = directory / (name + suffix)
        if path.is_file():
            return path
    return None


def load(directory: Path | None = None) -> ModuleType | None:
    """Import the built module for the current sources; None when there is none."""
    path = find(directory)
    return None if path is None else load_file(path)


def load_file(path: Path) -> ModuleType:
    """Import the built module at ``path``, whatever sources it was built from."""
    name = path.name.split(".", 1)[0]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


_chosen: Kernels | None = None


def ahead_of_time(directory: Path | None = None) -> Kernels | None:
    """The kernels of the module built for the current sources, or None."""
    module = load(directory)
    return None if module is None else kernels_of(module)


def kernels_of(module: ModuleType) -> Kernels:
    """The kernels of a built module (see ``load_file``)."""
    return Kernels(module.run_batch, module.tick, module.init_state, "ahead-of-time", module.__file__)


def jit(why: str = "asked for") -> Kernels:
    """The kernels under numba: compiled at the first call, or loaded from numba's cache."""
    from edge.engine import kernels

    return Kernels(kernels.run_batch, kernels.tick, kernels.init_state, "jit", why)


def implementation() -> Kernels:
    """The kernels the engine runs: the built module when it matches the sources, else numba's."""
    global _chosen
    if _chosen is None:
        forced = os.environ.get("EDGE_KERNELS") == "jit"
        chosen = None
        if not forced:
            try:
                chosen = ahead_of_time()
            except (ImportError, OSError) as error:  # a damaged file: the gateway still runs, on numba
                log.warning("engine kernels: the built module does not load (%s); using numba", error)
        if chosen is not None:
            log.info("engine kernels: built ahead of time, %s", chosen.where)
        else:
            chosen = jit("EDGE_KERNELS=jit" if forced else
                         f"no module built for these sources in {kernels_dir()}; `edge engine build` makes one")
            log.info("engine kernels: numba JIT (%s)", chosen.where)
        _chosen = chosen
    return _chosen


def _signatures() -> dict[str, object]:
    """Each exported kernel's numba signature, read off the arguments a small engine passes."""
    from numba import typeof, types

    from edge.engine.engine import Engine, ReadingBatch
    from edge.engine.rules import load_rules
    from edge.registry import Device, Registry

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "one.yaml"
        path.write_text("rules:\n  - name: tilted\n    applies_to: {kind: manhole_cover}\n    when: tilt_deg > 15\n"
                        "    order: {category: manhole_cover_displaced, severity: major, title: '{device}'}\n")
        rules = load_rules([path])
    registry = Registry([Device("D1", "manhole_cover", "m", "a", 0.0, 0.0, "G", "Z", "t", 0, {})], [])
    # no kernel runs here (init_state does nothing): only the types of the arguments are read
    engine = Engine(rules, registry, origin=0.0, kernels=Kernels(None, None, _no_init, "signatures", ""))
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float64)
    batch_args = engine.batch_args(ReadingBatch(empty_i, empty_i, empty_f, empty_f), 0)
    tick_args = engine.tick_args(0.0, 0)
    i8 = types.int64
    return {
        "run_batch": types.UniTuple(i8, 4)(*[typeof(a) for a in batch_args]),
        "tick": types.UniTuple(i8, 2)(*[typeof(a) for a in tick_args]),
        "init_state": types.none(*[typeof(a) for a in engine.init_args()]),
    }


def _no_init(*args) -> None:
    return None


def build(directory: Path | None = None, cpu: str = "host") -> Path:
    """Compile the kernels into an extension module in ``directory``; returns its path.

    Takes about as long as numba's first compile (tens of seconds). The module appears
    atomically: an engine starting meanwhile finds either no module or a whole one. ``cpu``
    is the LLVM name of the CPU to tune for; only "host" makes a module the gateway should
    run (another, such as "haswell", is for tools that cannot run every instruction of this
    CPU: bench/bench_engine_instructions.py runs the kernels under valgrind)."""
    from numba.core.errors import NumbaPendingDeprecationWarning

    from edge.engine import kernels

    directory = kernels_dir() if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    name = module_name()
    signatures = _signatures()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
        from numba.pycc import CC

        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            cc = CC(name)
            cc.output_dir = scratch
            cc.target_cpu = cpu
            cc.use_nrt = False  # the kernels never allocate (see kernels.py)
            cc.verbose = False
            for export in EXPORTS:
                cc.export(export, signatures[export])(getattr(kernels, export).py_func)
            started = time.perf_counter()
            cc.compile()
            built = next(Path(scratch).glob(name + ".*"))
            target = directory / built.name
            os.replace(built, target)
    log.info("built %s in %.1f s", target, time.perf_counter() - started)
    for stale in directory.glob("edge_kernels_*"):  # modules of earlier sources can never load again
        if stale.name != target.name:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return target
