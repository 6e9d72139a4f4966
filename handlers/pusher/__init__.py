"""``pusher``: the Pusher Channels protocol (version 7) and HTTP API on wsgate. See docs/pusher.md."""

from .handler import Pusher

__all__ = ["Pusher"]
