"""Open files: the ``RLIMIT_NOFILE`` limit, and the listening socket that survives hitting it.

Every connection is one file descriptor. At start fastws raises its soft limit to the
hard limit (an unprivileged process may) and warns when ``max_connections`` is above
what the limit then allows.

Past the limit, ``accept()`` fails with ``EMFILE``. aiofastnet 1.2.0 then means to stop
watching the listening socket for a second, but calls ``remove_reader`` on the socket
instead of the loop (``AttributeError``): the reader stays, the loop spins at 100 % CPU
and logs a traceback on every turn; and even with that fixed, its accept loop goes on
calling ``accept()`` up to ``backlog`` more times in the same turn, each logged with a
traceback. :func:`listening_socket` binds the socket itself and passes it to picows as
``sock=``, as a :class:`ListeningSocket`: its ``remove_reader`` does what aiofastnet
meant, and its ``accept`` says "nothing to accept" until the pause is over, which ends
that loop. What remains is one logged ``socket.accept() out of system resource`` per
second while the descriptors are exhausted (docs/upstream/aiofastnet-accept-emfile.md).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["FD_RESERVE", "raise_nofile_limit", "check_fd_limit", "ListeningSocket", "listening_socket"]

logger = logging.getLogger("fastws.server")

#: Descriptors a server needs besides its clients (listening sockets, the loop, logs,
#: the metrics server, a backplane, the workers' socket pairs, a few being accepted).
FD_RESERVE = 64
#: Seconds ``accept`` stays paused after EMFILE. Must stay below aiofastnet's
#: ``ACCEPT_RETRY_DELAY`` (1 s), after which it watches the socket again: a pause still
#: running then would make every loop turn call ``accept`` in vain (a spin).
PAUSE = 0.5


def raise_nofile_limit() -> tuple[int, int] | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return ``(soft, hard)`` after.

    ``None`` where there is no such limit (not POSIX). Never raises.
    """
    if resource is None:  # pragma: no cover
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            if target > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                logger.debug("raised the open-file limit from %d to %d", soft, target)
                soft = target
    except (OSError, ValueError) as exc:  # a container may forbid it
        logger.warning("cannot raise the open-file limit (RLIMIT_NOFILE): %s", exc)
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        except OSError:  # pragma: no cover
            return None
    return soft, hard


def check_fd_limit(max_connections: int, *, warn: bool = True, processes: int = 1) -> int | None:
    """Raise the soft limit (:func:`raise_nofile_limit`); warn if ``max_connections``, shared by
    ``processes`` (the workers, each with this limit), does not fit in it. Returns the
    connections the limit allows one process (``None``: no limit known)."""
    limits = raise_nofile_limit()
    if limits is None:  # pragma: no cover
        return None
    soft = limits[0]
    if resource is not None and soft == resource.RLIM_INFINITY:  # pragma: no cover
        return None
    allowed = max(0, soft - FD_RESERVE)
    share = -(-max_connections // max(1, processes))  # the kernel spreads connections evenly over workers
    if warn and share > allowed:
        logger.warning(
            "max_connections is %d%s but the open-file limit (RLIMIT_NOFILE %d, hard limit %d) allows about %d "
            "connections per process; past it new connections are refused. Raise the limit "
            "(ulimit -n, systemd LimitNOFILE=, docker --ulimit nofile=) or lower max_connections",
            max_connections, f" ({share} per worker process)" if processes > 1 else "", soft, limits[1], allowed)
    return allowed


class ListeningSocket(socket.socket):
    """A listening socket with the ``remove_reader`` that aiofastnet 1.2.0 calls on it.

    aiofastnet's accept loop, on ``EMFILE``/``ENFILE``/``ENOBUFS``/``ENOMEM``, calls
    ``listening_sock.remove_reader(fd)`` and schedules watching again in 1 s. This does
    what it means (``loop.remove_reader``), and logs once per pause, naming the limit.
    """

    __slots__ = ("_fastws_loop", "pauses", "_logged_at", "_paused_until")

    _fastws_loop: asyncio.AbstractEventLoop | None
    pauses: int
    _logged_at: float
    _paused_until: float

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._fastws_loop = loop
        self.pauses = 0
        self._logged_at = -1e9
        self._paused_until = 0.0

    def accept(self) -> tuple[socket.socket, object]:
        if self._paused_until and time.monotonic() < self._paused_until:
            # ends aiofastnet's accept loop for this turn quietly, as an empty backlog does
            raise BlockingIOError(errno.EAGAIN, "accepting is paused: out of file descriptors")
        return super().accept()

    def remove_reader(self, fd: int) -> bool:
        loop = self._fastws_loop
        self.pauses += 1
        now = time.monotonic()
        self._paused_until = now + PAUSE
        if now - self._logged_at >= 10.0:
            self._logged_at = now
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource is not None else "?"
            logger.warning(
                "accept() failed: out of file descriptors (RLIMIT_NOFILE %s); new connections wait in the "
                "backlog, accepting again in 1 s (%d pauses so far)", soft, self.pauses)
        return loop.remove_reader(fd) if loop is not None else False


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> ListeningSocket | None:
    """A bound (not yet listening) :class:`ListeningSocket` for ``host:port``.

    ``None`` when ``host`` resolves to several addresses (e.g. ``localhost`` to 127.0.0.1
    and ::1): picows then binds them itself, without the ``EMFILE`` workaround.
    Raises ``OSError`` as ``bind`` does.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = {(info[0], info[4]) for info in infos}
    if len(addresses) != 1:
        return None
    family, type_, proto, _, addr = infos[0]
    sock = ListeningSocket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    sock.bind_loop(asyncio.get_running_loop())
    return sock
