"""``from wsrace.client import Subscription``: follow a topic across reconnects and restarts (see server/client.py)."""

from __future__ import annotations

from . import submodule

_client = submodule("client")
HistoryLost = _client.HistoryLost
Subscription = _client.Subscription
SubscriptionEnded = _client.SubscriptionEnded

__all__ = ["HistoryLost", "Subscription", "SubscriptionEnded"]
