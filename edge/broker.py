"""A private MQTT broker for the demo and the tests: Mosquitto when installed, else amqtt.

The broker listens on 127.0.0.1 on a free port, keeps its files in a folder of its own, and
is stopped with ``stop()``. Mosquitto's settings matter to the gateway: its default queue
of 1000 messages per client silently drops QoS 1 readings in a burst, so it is raised.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO_CONF = """\
# Private broker of the street-side edge gateway (demo / tests).
listener {port} 127.0.0.1
allow_anonymous true
{persistence}
max_queued_messages 1000000
max_inflight_messages 1000
log_dest stderr
log_type error
log_type warning
"""

AMQTT_CONF = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


class BrokerError(Exception):
    pass


@dataclass
class Broker:
    name: str
    host: str
    port: int
    process: subprocess.Popen | None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def start_mosquitto(workdir: Path, port: int | None = None, persistent: bool = False) -> Broker:
    """Mosquitto on 127.0.0.1; ``persistent`` keeps sessions and queued messages across its restarts."""
    binary = mosquitto_path()
    if binary is None:
        raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    persistence = (f"persistence true\npersistence_location {workdir}/\nautosave_interval 1"
                   if persistent else "persistence false")
    if persistent and hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started as root, Mosquitto drops to the user 'mosquitto', who cannot write our folder:
        # it would then keep nothing across its restarts.
        persistence += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}"
    conf.write_text(MOSQUITTO_CONF.format(port=port, persistence=persistence))
    log_path = workdir / "mosquitto.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    if not wait_for_port("127.0.0.1", port, 10, process):
        process.kill()
        raise BrokerError(f"mosquitto did not start on 127.0.0.1:{port}; see {log_path}")
    return Broker("mosquitto", "127.0.0.1", port, process, log_path)


def start_amqtt(workdir: Path, port: int | None = None) -> Broker:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "amqtt.yaml"
    conf.write_text(AMQTT_CONF.format(port=port))
    log_path = workdir / "amqtt.log"
    code = "import sys; from amqtt.scripts.broker_script import main; sys.argv[0] = 'amqtt'; sys.exit(main())"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-c", code, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    if not wait_for_port("127.0.0.1", port, 20, process):
        process.kill()
        raise BrokerError(f"the embedded amqtt broker did not start on 127.0.0.1:{port}; see {log_path}")
    return Broker("amqtt (embedded)", "127.0.0.1", port, process, log_path)


def start_private_broker(workdir: Path, embedded: bool = False) -> Broker:
    """Mosquitto if it is on this machine (and ``embedded`` is not asked), else the embedded Python broker."""
    if not embedded and mosquitto_path() is not None:
        return start_mosquitto(workdir)
    return start_amqtt(workdir)
