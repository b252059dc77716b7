"""The thread-affinity check: socket IO and loop state belong to the IO thread.

Off by default in production (it costs one comparison per call); on in every
test. Switch it on with ``WSRACE_CHECK_AFFINITY=1``, ``--check-affinity`` or
:func:`set_enabled`. When on, every socket read and write of a transport and
every IO-thread-only method of :class:`~server.core.loop.IOLoop` checks its thread
(like asyncio's debug mode).
"""

from __future__ import annotations

import os
import threading

from ..errors import WsraceError

# Read by hot paths before they call check_io_thread (a global read, no call, while off); set it with set_enabled().
enabled = os.environ.get("WSRACE_CHECK_AFFINITY", "").lower() in {"1", "true", "yes", "on"}


class WriteAffinityError(WsraceError, RuntimeError):
    """Socket IO (or an IO-thread-only loop call) ran on a thread other than the IO thread."""


def set_enabled(on: bool) -> None:
    """Turn the check on or off for the whole process."""
    global enabled
    enabled = on


def check_io_thread(io_thread_id: int | None, action: str, subject: str = "") -> None:
    """Raise :class:`WriteAffinityError` if the caller is not the IO thread (no check before the loop runs).

    ``action`` and ``subject`` say what was attempted and on what ("socket write to", "127.0.0.1:5000"),
    so the error names the operation, the offending thread and the owner.
    """
    if not enabled or io_thread_id is None:
        return
    me = threading.current_thread()
    if me.ident != io_thread_id:
        owner = next((t.name for t in threading.enumerate() if t.ident == io_thread_id), "<not running>")
        raise WriteAffinityError(
            f"{action}{' ' + subject if subject else ''} from thread {me.name!r} (id {me.ident}); "
            f"only the IO thread {owner!r} (id {io_thread_id}) may do this"
        )
