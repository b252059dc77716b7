"""The write-affinity check: every socket write must run on the IO thread.

Off by default in production (it costs one comparison per write); on in every
test. Switch it on with ``WSRACE_CHECK_AFFINITY=1``, ``--check-affinity`` or
:func:`set_enabled`.
"""

from __future__ import annotations

import os
import threading

_enabled = os.environ.get("WSRACE_CHECK_AFFINITY", "").lower() in {"1", "true", "yes", "on"}


class WriteAffinityError(RuntimeError):
    """A socket write ran on a thread other than the connection's IO thread."""


def set_enabled(enabled: bool) -> None:
    """Turn the check on or off for the whole process."""
    global _enabled
    _enabled = enabled


def check_write(io_thread_id: int | None, peer: str) -> None:
    """Raise :class:`WriteAffinityError` if the caller is not the IO thread.

    ``peer`` names the connection written to, so the error says where and by whom.
    """
    if not _enabled:
        return
    me = threading.current_thread()
    if me.ident != io_thread_id:
        owner = next((t.name for t in threading.enumerate() if t.ident == io_thread_id), "<not running>")
        raise WriteAffinityError(
            f"socket write to {peer} from thread {me.name!r} (id {me.ident}); "
            f"only the IO thread {owner!r} (id {io_thread_id}) may write to this socket"
        )
