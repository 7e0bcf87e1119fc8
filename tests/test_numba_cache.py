"""numba's on-disk cache follows every file a kernel compiles in, not only the kernel's own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT

KERNEL = '''
from pathlib import Path
from numba import njit
import helper
from edge.engine.numba_cache import flush_if_changed

@njit(cache=True)
def answer():
    return helper.value()

flush_if_changed(globals(), [Path(__file__), Path(helper.__file__)])
'''

HELPER = '''
from numba import njit

@njit(inline="always")
def value():
    return {value}
'''


def run(folder) -> str:
    code = "import kernel; print(kernel.answer(), sum(kernel.answer.stats.cache_hits.values()))"
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": f"{folder}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_change_in_an_inlined_helper_recompiles_the_cached_kernel(tmp_path):
    (tmp_path / "kernel.py").write_text(textwrap.dedent(KERNEL))
    (tmp_path / "helper.py").write_text(HELPER.format(value=1))
    assert run(tmp_path)[0] == "1"
    assert run(tmp_path) == ["1", "1"]  # the second run came from the cache
    (tmp_path / "helper.py").write_text(HELPER.format(value=2))  # only the helper changes (an upgrade)
    assert run(tmp_path) == ["2", "0"]  # numba alone would have loaded the cached 1
    assert run(tmp_path) == ["2", "1"]  # and the new code is cached in turn
