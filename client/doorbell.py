"""A doorbell from the hospital's SuperNode to its executor: "a task is waiting".

The executor (:mod:`client.executor`) takes tasks from the SuperNode's runtime API; asking for
one is an HTTP request that both processes parse. Asked ten times a second, as it once was
while a round ran, 20 hospitals sharing one 2-core machine spent most of a core on the asking.
Instead the SuperNode rings once per message it queues (:func:`ring`, from the patched loop in
:mod:`client.supernode`) and the executor sleeps on the bell (:class:`Doorbell`) between tasks,
asking again only when it rang or, as a safety net (a bell lost while the SuperNode restarted),
after ``fallback_s``.

The bell is a Unix datagram socket next to the runtime socket, inside the same 0700 folder: no
other account can ring it. A ring carries nothing; a stray one only costs one extra request.
"""

from __future__ import annotations

import contextlib
import select
import socket
from pathlib import Path

from common.site_state import RUNTIME_BELL_NAME


def bell_path(runtime_socket: Path) -> Path:
    """Where the executor of the SuperNode serving ``runtime_socket`` listens."""
    return Path(runtime_socket).with_name(RUNTIME_BELL_NAME)


def ring(path: Path) -> None:
    """Ring the bell at ``path``; never blocks, never raises (nobody listening is fine)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.setblocking(False)
        out.sendto(b"\x01", str(path))


class Doorbell:
    """The executor's end: :meth:`wait` returns as soon as the bell rings."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.unlink(missing_ok=True)  # left by a process that is gone (the folder is ours)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.bind(str(self.path))
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)

    def wait(self, timeout_s: float) -> bool:
        """Sleep until a ring or ``timeout_s``; True if it rang (every ring so far is taken)."""
        ready, _, _ = select.select([self._socket], [], [], timeout_s)
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while True:
                self._socket.recv(64)
        return True

    def close(self) -> None:
        self._socket.close()
        self.path.unlink(missing_ok=True)
