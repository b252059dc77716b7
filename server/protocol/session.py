"""The WebSocket session of one connection, sans I/O.

A :class:`Session` starts once the 101 reply is decided. It owns the wsproto
connection, message assembly, keepalive and the one close state machine, and
does no I/O: feed it what the socket read (:meth:`Session.receive_data`), tell
it when a deadline passed or a handler finished, then collect what it decided —
bytes to write (:meth:`Session.data_to_send`), events for the application and
the connection (:meth:`Session.events`) and deadlines to (re)arm
(:meth:`Session.deadlines`). The connection does the I/O; tests feed bytes.

The close state machine::

    OPEN ──close(wait_for_reply=True)──▶ CLOSING ──client's close frame──▶ CLOSED
      │ └──client's close frame (echoed) / close(wait_for_reply=False)────▶ CLOSED
      └──protocol error──▶ FAILING ──handlers done or FAIL deadline──────▶ CLOSED

CLOSED means our side of the closing handshake is done: shut the socket once
everything queued is written (:class:`ShutAfterFlush`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension

from ..codes import CloseCode
from ..limits import Limits
from .frames import OutMessage
from .reader import PLAIN, FrameSplitter


class SessionState(enum.Enum):
    OPEN = "open"
    FAILING = "failing"  # the client broke the protocol: close once in-flight handlers are done
    CLOSING = "closing"  # our close frame is queued: waiting for the client's
    CLOSED = "closed"  # our side of the closing handshake is done


class Deadline(enum.Enum):
    """The session's timers; the connection arms them on its loop."""

    PING = "ping"  # send a keepalive ping
    PONG = "pong"  # the client must have answered the oldest unanswered ping
    FAIL = "fail"  # a failing session stops waiting for its handlers
    CLOSE = "close"  # the closing handshake must be over (judged by the connection, which sees the socket)


@dataclass(slots=True)  # one per message: not frozen, whose __init__ costs an object.__setattr__ per field
class MessageReceived:
    """A complete message for the handler; call :meth:`Session.message_handled` once it is handled."""

    message: str | bytes


@dataclass(frozen=True)
class ProtocolError:
    """The client broke RFC 6455 (or a limit): nothing it sends from now on is processed."""

    code: int
    reason: str


@dataclass(frozen=True)
class Closing:
    """The close code is decided (our close frame or the client's): producers may send nothing more."""

    code: int
    reason: str


@dataclass(frozen=True)
class ShutAfterFlush:
    """Our side of the closing handshake is done: half-close once everything queued is written."""


@dataclass(frozen=True)
class PingSent:
    """A keepalive ping was queued."""


@dataclass(frozen=True)
class PongReceived:
    """The client answered a ping."""


@dataclass(frozen=True)
class PongTimeout:
    """No pong within ``Limits.ping_timeout``: the connection should fail with 1011."""


SessionEvent = MessageReceived | ProtocolError | Closing | ShutAfterFlush | PingSent | PongReceived | PongTimeout


class Session:
    """One WebSocket session (server side), driven by bytes and deadlines; no I/O, no clock, no threads."""

    def __init__(self, limits: Limits, extension: Extension | None = None, plain_frames: bool = True) -> None:
        """``plain_frames=False``: every frame through wsproto (the reference the fast path is tested against)."""
        self._ws = WsConnection(ConnectionType.SERVER, [extension] if extension else [])
        # Plain data frames without wsproto's parser (server.protocol.reader).
        self._splitter = FrameSplitter(limits.max_message_bytes) if plain_frames else None
        self._limits = limits
        self.deflate = extension is not None
        self.state = SessionState.OPEN
        self.close_code: int | None = None
        self.closed_by = "none"  # who sent the first close frame: "client" or "server" ("none": no closing handshake)
        self.close_reason = ""
        self.inflight = 0  # messages handed out as MessageReceived and not yet handled
        self.inflight_bytes = 0
        self._partial: list[str | bytes | bytearray] = []
        self._partial_size = 0
        self._failure: tuple[int, str] | None = None
        self._ping_seq = 0
        self._out: list[bytes] = []
        self._events: list[SessionEvent] = []
        self._deadlines: dict[Deadline, float | None] = {}
        self._armed: set[Deadline] = set()
        if limits.ping_interval:
            self._arm(Deadline.PING, limits.ping_interval)

    # -- what the session decided ------------------------------------------

    # Called after every read: nothing new is the common case, answered without allocating.

    def data_to_send(self) -> bytes:
        """Control frames (pongs, pings, close) to write, in order, since the last call."""
        if not self._out:
            return b""
        data, self._out = b"".join(self._out), []
        return data

    def events(self) -> list[SessionEvent]:
        """What happened since the last call, in order."""
        events = self._events
        if events:
            self._events = []
        return events

    def deadlines(self) -> dict[Deadline, float | None]:
        """Deadlines changed since the last call: seconds from now, or None to cancel."""
        changes = self._deadlines
        if changes:
            self._deadlines = {}
        return changes

    @property
    def accepts_data(self) -> bool:
        """True while data messages may still be sent (also while failing: replies go out before the close)."""
        return self.state is SessionState.OPEN or self.state is SessionState.FAILING

    # -- inputs -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client."""
        if self.state is SessionState.CLOSED or self.state is SessionState.FAILING:
            return  # fail fast: nothing after a protocol error is processed
        if self._splitter is None:
            self._receive_frames(data)
            return
        for kind, piece in self._splitter.split(data):
            if kind is PLAIN:  # a whole message in one plain frame (server.protocol.reader)
                if self.state is SessionState.OPEN:
                    self._on_message(piece)
                continue  # closing: the client's data no longer matters
            self._receive_frames(piece)  # type: ignore[arg-type]
            if self.state is SessionState.CLOSED or self.state is SessionState.FAILING:
                return

    def _receive_frames(self, data: bytes) -> None:
        """Frames for wsproto: control frames, fragments, compressed ones, anything it must judge."""
        self._ws.receive_data(data)
        for event in self._ws.events():
            if isinstance(event, CloseConnection):
                self._on_close_frame(event)
                return
            if self.state is not SessionState.OPEN:
                continue  # closing: the client's data and pings no longer matter
            if isinstance(event, (TextMessage, BytesMessage)):
                self._on_message_part(event)
                if self.state is not SessionState.OPEN:
                    return
            elif isinstance(event, Ping):
                self._out.append(self._ws.send(event.response()))
            elif isinstance(event, Pong):
                self._cancel(Deadline.PONG)
                self._events.append(PongReceived())

    def encode(self, out: OutMessage) -> bytes:
        """A data message as compressed frames (with deflate; the context is per connection, so call in order)."""
        event = TextMessage(data=out.payload.decode("utf-8")) if out.text else BytesMessage(data=out.payload)
        return self._ws.send(event)

    def message_handled(self, size: int) -> bool:
        """A :class:`MessageReceived` of ``size`` bytes was handled (or dropped).

        True if that decided something (a failing session's close, held back
        for its handlers): then there are events, deadlines or bytes to apply.
        """
        self.inflight -= 1
        self.inflight_bytes -= size
        if self.state is SessionState.FAILING and not self.inflight:
            self._close_failed()
            return True
        return False

    def close(self, code: int, reason: str = "", wait_for_reply: bool = True) -> None:
        """Start the closing handshake; ignored once closing. ``wait_for_reply=False``: shut after the close frame."""
        if not self.accepts_data:
            return
        self._send_close(code, reason)
        if wait_for_reply and self.state is SessionState.OPEN:
            self.state = SessionState.CLOSING
            self._cancel(Deadline.PING)
            self._cancel(Deadline.PONG)
            self._cancel(Deadline.FAIL)
            self._arm(Deadline.CLOSE, self._limits.close_timeout)
        else:
            self._shut()

    def deadline_passed(self, deadline: Deadline) -> None:
        """A deadline armed through :meth:`deadlines` passed (CLOSE is the connection's to judge)."""
        self._armed.discard(deadline)
        if deadline is Deadline.PING:
            self._ping()
        elif deadline is Deadline.PONG and self.state is SessionState.OPEN:
            self._events.append(PongTimeout())
        elif deadline is Deadline.FAIL:
            self._close_failed()

    def wait_for_pong(self, delay: float) -> None:
        """The PONG deadline passed but the ping is not late yet (still behind data on its way): wait ``delay`` more."""
        self._armed.discard(Deadline.PONG)
        if self.state is SessionState.OPEN:
            self._arm(Deadline.PONG, delay)

    # -- internals ----------------------------------------------------------

    def _on_message_part(self, event: TextMessage | BytesMessage) -> None:
        self._partial_size += len(event.data)
        if self._partial_size > self._limits.max_message_bytes:
            self._protocol_error(CloseCode.MESSAGE_TOO_BIG, f"message over {self._limits.max_message_bytes} bytes")
            return
        self._partial.append(event.data)
        if not event.message_finished:
            return
        parts, self._partial, self._partial_size = self._partial, [], 0
        self._on_message("".join(parts) if isinstance(event, TextMessage) else b"".join(parts))  # type: ignore[arg-type]

    def _on_message(self, message: str | bytes) -> None:
        # Within max_message_bytes: assembled parts are checked above, a plain frame's limit is the splitter's.
        self.inflight += 1
        self.inflight_bytes += len(message)
        self._events.append(MessageReceived(message))

    def _on_close_frame(self, event: CloseConnection) -> None:
        # wsproto's state says what the close event means; our state machine decides what to do.
        if self._ws.state is ConnectionState.REMOTE_CLOSING:  # the client starts the closing handshake
            if self.close_code is None:
                self.closed_by = "client"
            self._record(event.code, event.reason or "")
            self._out.append(self._ws.send(event.response()))
            self._shut()
        elif self._ws.state is ConnectionState.CLOSED:  # the client answered our close frame
            self._shut()
        else:  # wsproto turned a parse failure into a close event (1002, 1007, ...)
            reason = event.reason or "protocol error"
            if event.code == CloseCode.MESSAGE_TOO_BIG:  # from BoundedPerMessageDeflate
                reason = f"message inflates to over {self._limits.max_message_bytes} bytes"
            self._protocol_error(event.code, reason)

    def _protocol_error(self, code: int, reason: str) -> None:
        """Fail on the client's protocol error (RFC 6455 7.1.7), strictly.

        Nothing received after the error is processed, but the replies to
        messages received before it go out first: the close frame waits until
        their handlers are done, at most ``close_timeout``.
        """
        self._events.append(ProtocolError(code, reason))
        if self.state is SessionState.CLOSING:  # our close frame is out: nothing left to say
            self._shut()
            return
        self._failure = (code, reason)
        self.state = SessionState.FAILING
        self._cancel(Deadline.PING)
        self._cancel(Deadline.PONG)
        if self.inflight:
            self._arm(Deadline.FAIL, self._limits.close_timeout)
        else:
            self._close_failed()

    def _close_failed(self) -> None:
        if self.state is SessionState.FAILING and self._failure is not None:
            self._send_close(*self._failure)
            self._shut()

    def _send_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.closed_by = "server"
        self._record(code, reason)
        if self._ws.state is ConnectionState.OPEN:
            self._out.append(self._ws.send(CloseConnection(code=code, reason=reason)))

    def _record(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._events.append(Closing(code, reason))

    def _shut(self) -> None:
        self.state = SessionState.CLOSED
        for deadline in (Deadline.PING, Deadline.PONG, Deadline.FAIL):
            self._cancel(deadline)
        if Deadline.CLOSE not in self._armed:
            self._arm(Deadline.CLOSE, self._limits.close_timeout)
        self._events.append(ShutAfterFlush())

    def _ping(self) -> None:
        if self.state is not SessionState.OPEN:
            return
        self._ping_seq += 1
        self._out.append(self._ws.send(Ping(payload=struct.pack("!I", self._ping_seq))))
        self._events.append(PingSent())
        if Deadline.PONG not in self._armed:
            self._arm(Deadline.PONG, self._limits.ping_timeout)
        if self._limits.ping_interval:
            self._arm(Deadline.PING, self._limits.ping_interval)

    def _arm(self, deadline: Deadline, delay: float) -> None:
        self._armed.add(deadline)
        self._deadlines[deadline] = delay

    def _cancel(self, deadline: Deadline) -> None:
        if deadline in self._armed:
            self._armed.discard(deadline)
            self._deadlines[deadline] = None
