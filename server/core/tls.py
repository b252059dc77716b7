"""wss://: the TLS transport. One ``SSL`` object per connection, used by the IO thread alone.

OpenSSL forbids ``SSL_read`` and ``SSL_write`` on one ``SSL`` object from
different threads (openssl/openssl#20446); threaded Python servers that read on
one thread and write on another break that rule, and their users see failed
handshakes, ``bad write retry``, ``BAD_LENGTH`` and crashes. Here the IO thread
that owns the socket owns its ``SSL`` object too: the handshake, every read,
every write and the ``close_notify`` run on it, non-blocking, and the affinity
check covers reads as well as writes.

The rules of a non-blocking ``SSLSocket`` (Python's ``ssl`` docs, "Notes on
non-blocking sockets"), and where each is kept:

* want-read and want-write can come from ``do_handshake``, ``recv`` and
  ``send``: the transport's one readiness callback runs whichever side is waiting;
* after a want-write, retry with the same bytes (no partial writes):
  the transport holds them (its pending ciphertext), and the send buffer keeps the
  frames they came from (``SendBuffer.in_flight``) until they are written;
* no ``sendall``, and no ``sendmsg`` (not implemented for TLS): frames are
  coalesced into one buffer of at most :data:`TLS_CHUNK` bytes per ``send``;
* ``select()`` cannot see bytes already decrypted inside the ``SSL`` object:
  :meth:`TlsTransport.read` reads until want-read, so nothing is left there.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
from collections.abc import Callable

from ..errors import WsraceError
from ..protocol.handshake import http_response
from . import affinity
from .loop import IOLoop
from .sendbuffer import SendBuffer
from .transport import RECV_SIZE, SocketTransport

logger = logging.getLogger(__name__)

TLS_CHUNK = 256 * 1024  # plaintext per SSL_write when frames are coalesced
_JOIN_OVERSHOOT = 64 * 1024  # gather stops past TLS_CHUNK; a last frame this small is joined whole
_READ_BURST = 4 * RECV_SIZE  # per readiness event, unless the SSL object still holds bytes
_PLAIN_HTTP_400 = http_response(400, b"this port speaks TLS: use https:// or wss://\n")


class TlsTransport(SocketTransport):
    """A TLS server connection over a non-blocking socket, driven by one IO thread."""

    def __init__(self, loop: IOLoop, sock: socket.socket, context: ssl.SSLContext | None) -> None:
        """``context=None``: ``sock`` is an ``SSLSocket`` another server accepted and finished the handshake on.

        That socket is borrowed (a WSGI server's): :meth:`close` releases it
        — shuts the connection down, leaves the object to its owner, who may
        use it again only once the connection is closed — instead of closing it.
        """
        self.borrowed = context is None
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        elif not isinstance(sock, ssl.SSLSocket):
            raise TypeError(f"context=None needs an established ssl.SSLSocket, not {type(sock).__name__}")
        super().__init__(loop, sock)
        self._tls: ssl.SSLSocket = self._sock  # type: ignore[assignment]
        self.established = self.borrowed
        self._handshake_error: OSError | None = None
        self._pending: tuple[bytes | memoryview, int, int, int] | None = None  # (bytes, offered, frames, reserved)
        self._buffer: SendBuffer | None = None
        self._read_wants_write = False  # a read needs the socket writable (TLS 1.3 key update, ...)
        self._write_wants_read = False  # a write needs the socket readable
        self._eof_seen = False

    def start(self, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> None:
        super().start(on_readable, on_writable)
        if self.borrowed:  # plaintext its owner left decrypted inside the SSL object is invisible to select()
            self._loop.call_after_batch(self._on_readable)

    def close(self) -> None:
        """Close the socket — or, borrowed, shut the connection down and leave the object to its owner."""
        if not self.borrowed or self.closed:
            super().close()
            return
        self.closed = True
        self._loop.remove(self._sock)
        try:
            socket.socket.shutdown(self._tls, socket.SHUT_RDWR)  # not SSLSocket.shutdown: the owner's object stays whole
        except OSError:
            pass

    @property
    def version(self) -> str | None:
        """The negotiated protocol (``"TLSv1.3"``), once established."""
        return self._tls.version() if self.established else None

    def read(self) -> bytes | None:
        """Decrypted bytes, ``b""`` at EOF, ``None`` if nothing now; raises OSError (the handshake's failure too)."""
        affinity.check_io_thread(self._loop.thread_id, "TLS read from", self.peer)
        if self._handshake_error is not None:
            raise self._handshake_error
        if not self.established:
            return None
        if self._eof_seen:
            return b""
        chunks: list[bytes] = []
        total = 0
        wanted_write, self._read_wants_write = self._read_wants_write, False
        while total < _READ_BURST or self._pending_in_ssl():
            try:
                data = self._sock.recv(RECV_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                break
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                break
            if not data:
                self._eof_seen = True  # say so on the next read: the socket may not be readable again
                if chunks:
                    self._loop.call_after_batch(self._on_readable)
                    break
                return b""
            chunks.append(data)
            total += len(data)
        if wanted_write != self._read_wants_write:
            self._update_interest()
        return b"".join(chunks) if chunks else None

    def write(self, buffer: SendBuffer) -> None:
        """Write as much of ``buffer`` as TLS takes; after a want-write, the same bytes again. Raises OSError."""
        affinity.check_io_thread(self._loop.thread_id, "TLS write to", self.peer)  # before anything changes
        self._buffer = buffer
        if not self.established:
            return  # queued bytes wait for the handshake; it flushes when done
        while self._pending is not None or buffer.frames:
            if self._pending is None:
                self._pending = self._take(buffer)
                buffer.in_flight = buffer.frames_in(len(self._pending[0]))
            data, offered, frames, reserved = self._pending
            try:
                sent = self._sock.send(data)
            except ssl.SSLWantWriteError:
                buffer.written(0, offered, frames, reserved)  # blocked: the stall judgement may start
                self._set_writing(True)
                return
            except ssl.SSLWantReadError:
                buffer.written(0, offered, frames, reserved)
                if not self._write_wants_read:
                    self._write_wants_read = True
                    self._update_interest()
                return
            self._pending = None
            buffer.in_flight = 0
            if self._write_wants_read:
                self._write_wants_read = False
                self._update_interest()
            buffer.written(sent, offered, frames, reserved)
            self._took_bytes()
        self._set_writing(False)

    def shutdown_write(self) -> None:
        """Best-effort ``close_notify``, then half-close; never blocks the loop. Raises OSError."""
        try:
            self._tls.unwrap()  # sends close_notify; the peer's answer does not matter
        except (ssl.SSLError, OSError, ValueError):
            pass  # want-read / want-write: sent, or the buffer is full; the FIN still goes out
        socket.socket.shutdown(self._tls, socket.SHUT_WR)

    def _update_interest(self) -> None:
        # A read may need the socket writable, and a write readable (TLS, not us, decides).
        if self.closed:
            return
        read = self.reading or self._write_wants_read or not self.established
        write = self.writing or self._read_wants_write
        self._loop.set_interest(self._sock, self._on_ready, read=read, write=write)

    def _on_ready(self, mask: int) -> None:
        if not self.established:
            self._handshake()
            return
        if mask & selectors.EVENT_WRITE and not self.closed:
            if self._read_wants_write:
                self._on_readable()
            if self.writing and not self.closed:
                self._on_writable()
        if mask & selectors.EVENT_READ and not self.closed:
            if self._write_wants_read:
                self._on_writable()
            if self.reading and not self.closed:
                self._on_readable()

    def _handshake(self) -> None:
        affinity.check_io_thread(self._loop.thread_id, "TLS handshake with", self.peer)
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._set_writing(False)
            return
        except ssl.SSLWantWriteError:
            self._set_writing(True)
            return
        except (ssl.SSLError, OSError) as exc:  # garbage, plain HTTP, a reset, an unknown CA, ...
            if isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST":
                self._answer_plain_http()
            self._handshake_error = exc
            self._on_readable()  # the connection reads, gets the error, and closes
            return
        self.established = True
        logger.debug("%s: TLS established (%s, %s)", self.peer, self._tls.version(), self._tls.cipher())
        self._set_writing(False)
        self._on_readable()  # the request often arrives with the client's Finished: already decrypted
        if self._buffer is not None and self._buffer.frames and not self.closed:
            self._on_writable()  # bytes queued while the handshake ran

    def _answer_plain_http(self) -> None:
        # As nginx does: a plain HTTP client gets a readable answer, not a reset.
        try:
            socket.socket.send(self._tls, _PLAIN_HTTP_400)
        except OSError:
            pass

    def _pending_in_ssl(self) -> bool:
        try:
            return bool(self._tls.pending())
        except (ssl.SSLError, ValueError):
            return False

    @staticmethod
    def _take(buffer: SendBuffer) -> tuple[bytes | memoryview, int, int, int]:
        """The next bytes for one ``send``: one big buffer as it is, or buffers joined up to TLS_CHUNK.

        A large frame's header is joined with the start of its payload (no
        10-byte record of its own); the rest of the payload goes out uncopied.
        """
        buffers, frames, offered, reserved = buffer.gather(TLS_CHUNK)
        if len(buffers) == 1 or len(buffers[0]) >= TLS_CHUNK:
            return buffers[0], offered, frames, reserved
        if offered <= TLS_CHUNK + _JOIN_OVERSHOOT:  # the common case (small frames): one join in C, no loop here
            return b"".join(buffers), offered, frames, reserved
        parts: list[bytes | memoryview] = []
        size = 0
        for buf in buffers:
            if size + len(buf) > TLS_CHUNK:
                parts.append(memoryview(buf)[: TLS_CHUNK - size])
                break
            parts.append(buf)
            size += len(buf)
        return b"".join(parts), offered, frames, reserved



class TlsConfigError(WsraceError):
    """A certificate or key that cannot be used; the message says which file and why."""


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server ``SSLContext`` (TLS 1.2 or later) for the certificate chain in ``certfile`` and its key.

    Raises :class:`TlsConfigError` naming the file for a missing, unreadable,
    malformed or mismatched certificate or key.
    """
    pem: dict[str, bytes] = {}
    for flag, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        try:
            with open(path, "rb") as f:
                pem[flag] = f.read(1 << 20)
        except OSError as exc:
            raise TlsConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem["--certfile"]:
        raise TlsConfigError(f"--certfile {certfile} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if b"PRIVATE KEY-----" not in pem["--keyfile"]:
        raise TlsConfigError(f"--keyfile {keyfile} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    if b"ENCRYPTED" in pem["--keyfile"]:
        raise TlsConfigError(f"--keyfile {keyfile} is encrypted: give an unencrypted key (openssl pkey -in {keyfile} -out plain.pem)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsConfigError(f"the key in {keyfile} does not belong to the certificate in {certfile}") from None
        raise TlsConfigError(f"cannot load the certificate {certfile} with the key {keyfile}: {exc.reason or exc} "
                             "(both must be PEM; the key unencrypted)") from None
    return context
