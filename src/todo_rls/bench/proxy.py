"""A loopback TCP proxy that delays every chunk, so local round trips cost what Neon's do.

Each direction waits rtt/2 before forwarding, so a request and its answer together pay one
rtt. Chunks keep their order and are forwarded as soon as their delay is over (pipelined, as
on a real network), by one reader and one writer thread per direction and connection.
"""

import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from types import TracebackType

_CHUNK = 65536


def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
    pending: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def read() -> None:
        try:
            while data := source.recv(_CHUNK):
                pending.put((time.perf_counter() + delay, data))
        except OSError:
            pass  # the other side closed: forward what is pending, then stop
        pending.put((0.0, b""))

    def write() -> None:
        try:
            while True:
                due, data = pending.get()
                if not data:
                    break
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    for job in (read, write):
        threading.Thread(target=job, daemon=True).start()


def _connect(upstream: str | tuple[str, int]) -> socket.socket:
    if isinstance(upstream, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(upstream)
        return sock
    sock = socket.create_connection(upstream)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _serve(upstream: str | tuple[str, int], delay: float) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)  # tells the parent where to connect
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = _connect(upstream)
        _pump(client, server, delay)
        _pump(server, client, delay)


class DelayProxy:
    """Listens on 127.0.0.1 (port chosen by the OS) and forwards to upstream with delay.

    It runs in a process of its own (python -m todo_rls.bench.proxy): in the bench's process
    its threads would wait for the GIL behind the client's, adding time no network adds.
    """

    def __init__(self, upstream: str | tuple[str, int], rtt_ms: float) -> None:
        # upstream: a Unix socket path (the embedded server) or a (host, port) pair.
        where = [upstream] if isinstance(upstream, str) else [upstream[0], str(upstream[1])]
        self._command = [sys.executable, "-m", __name__, str(rtt_ms), *where]
        self.port = 0

    def __enter__(self) -> "DelayProxy":
        self._process = subprocess.Popen(self._command, stdout=subprocess.PIPE, text=True)  # noqa: S603
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            self._process.kill()
            raise RuntimeError(f"the delay proxy did not start: {self._command}")
        self.port = int(line)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._process.terminate()
        self._process.wait()


def main(argv: list[str]) -> None:
    """python -m todo_rls.bench.proxy RTT_MS (SOCKET_PATH | HOST PORT): serve until killed."""
    rtt_ms, *where = argv
    upstream: str | tuple[str, int] = where[0] if len(where) == 1 else (where[0], int(where[1]))
    _serve(upstream, float(rtt_ms) / 2000)


if __name__ == "__main__":
    main(sys.argv[1:])
