"""``channels``: the Centrifugo client protocol v2 (JSON), its server API and proxy. See docs/channels.md."""

from .handler import Channels

__all__ = ["Channels"]
