"""scripts/test-tools: each missing system tool is named with the reason the tests need it,
installed from Debian's packages where it can be, and otherwise refused with the command to run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REASONS = {
    "openssl": "openssl: TLS certificates for the broker tests",
    "chromium": "chromium: the status page is checked in a headless browser",
    "systemd": "systemd: systemd-analyze verifies the service unit",
}


def bare_path(tmp_path: Path, **scripts: str) -> str:
    """A PATH with the shell and the few commands the script uses, plus ``scripts`` (name: body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("bash", "env", "id", "dirname"):
        (bin_dir / command).symlink_to(shutil.which(command))
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/usr/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def run(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/bash", str(ROOT / "scripts" / "test-tools")], env={"PATH": path},
                          capture_output=True, text=True, timeout=30)


def test_without_a_way_to_install_each_missing_tool_is_named_with_its_reason(tmp_path):
    done = run(bare_path(tmp_path))
    assert done.returncode == 1
    for reason in REASONS.values():
        assert reason in done.stderr
    assert "error: the tests need" in done.stderr and "sudo apt-get install" in done.stderr
    assert "chromium fonts-dejavu-core" in done.stderr


def test_what_is_installed_is_said_with_its_reason_first(tmp_path):
    calls = tmp_path / "apt-get.calls"
    # apt-get only records what it is asked; sudo (used when not root) runs the command as is
    path = bare_path(tmp_path, **{"apt-get": f'echo "$@" >> {calls}\n', "sudo": '[[ $1 == -n ]] && shift\nexec "$@"\n'})
    done = run(path)
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()
    assert said[0].startswith("installing ") and "chromium" in said[0]
    assert set(REASONS.values()) <= {line.strip() for line in said[1:]}
    update, install = calls.read_text().splitlines()
    assert update == "update -qq"
    assert install.startswith("install -y -qq --no-install-recommends") and "chromium" in install.split()
