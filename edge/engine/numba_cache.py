"""Keep numba's on-disk cache of the kernels in step with every file they are built from.

numba checks only the source file of a cached function. The engine's kernels also compile in
what they import: the anomaly detector (inlined from detectors.py), the function codes
(functions.py) and the opcodes (program.py). After an upgrade that changed only those, numba
would load the old machine code from the cache and run the old detector without a word. So
the kernels' module calls ``flush_if_changed`` once at import: it hashes those sources and,
when the hash differs from the one kept beside the cache, flushes the cache of every cached
kernel in the module (numba then compiles afresh and caches the new code).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from numba.core.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def flush_if_changed(namespace: dict, sources: list[Path]) -> bool:
    """Flush the on-disk cache of the cached dispatchers in ``namespace`` (a module's globals)
    when ``sources`` changed since the cache was last written; True when it flushed."""
    module = namespace["__name__"]
    dispatchers = [obj for obj in namespace.values()
                   if isinstance(obj, Dispatcher) and obj.__module__ == module and obj._cache.cache_path]
    if not dispatchers:
        return False
    digest = hashlib.sha256()
    for path in sorted(sources):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    stamp = Path(dispatchers[0]._cache.cache_path) / f"{module.rsplit('.', 1)[-1]}.sources.sha256"
    try:
        if stamp.read_text() == digest.hexdigest():
            return False
    except OSError:
        pass
    for dispatcher in dispatchers:
        dispatcher._cache.flush()
    try:
        stamp.write_text(digest.hexdigest())
    except OSError as error:  # an unwritable cache: numba will not cache either, so nothing is stale
        log.debug("cannot write %s: %s", stamp, error)
    return True
