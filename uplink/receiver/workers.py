"""Several platform processes on one listening socket: ``python -m uplink.receiver --workers N``.

The main process opens the database once (migrating it), binds the socket, and forks N
workers. Each worker opens its own connections, serves HTTP on the shared socket (the kernel
hands each new connection to one of them) and, with ``--mqtt``, runs a listener of its own
(client id ``<id>-<n>``) in the shared subscription group. The main process only watches: a
worker that dies (a crash, ``kill -9``) is started again with the same number, so its MQTT
session, and the messages the broker kept for it, are picked up where it left off. SIGTERM or
SIGINT stops the workers (each finishes its requests in progress, up to 5 s) and then the
main process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("uplink.receiver")
RESTART_PAUSE = 1.0  # seconds before a worker that died is started again (a crash loop costs one fork a second)


def _stop_with(parent: int) -> None:
    """A worker whose main process is gone (killed with -9) stops too, rather than serving unsupervised."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("the main process %d is gone; stopping worker pid %d", parent, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def fork_worker(number: int, sock: socket.socket, serve: Callable[[int, socket.socket], None]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        threading.Thread(target=_stop_with, args=(parent,), name="parent-watch", daemon=True).start()
        serve(number, sock)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:
        log.exception("worker %d failed", number)
        code = 1
    finally:
        os._exit(code)


def supervise(count: int, sock: socket.socket, serve: Callable[[int, socket.socket], None]) -> None:
    """Run ``serve(number, sock)`` in ``count`` forked workers until SIGTERM or SIGINT; restart any that die."""
    stopping = False

    def stop(*_) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers = {fork_worker(number, sock, serve): number for number in range(1, count + 1)}
    restart_at: dict[int, float] = {}
    while not stopping:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid and pid in workers:
            number = workers.pop(pid)
            how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit code {os.WEXITSTATUS(status)}")
            log.warning("worker %d (pid %d) stopped (%s); starting it again", number, pid, how)
            restart_at[number] = time.monotonic() + RESTART_PAUSE
        for number, at in list(restart_at.items()):
            if time.monotonic() >= at:
                del restart_at[number]
                workers[fork_worker(number, sock, serve)] = number
        time.sleep(0.1)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while workers and time.monotonic() < deadline:
        for pid in list(workers):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                workers.pop(pid)
        time.sleep(0.05)
    for pid in workers:
        log.warning("worker pid %d did not stop in time; killing it", pid)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
