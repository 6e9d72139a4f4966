"""How often one client may ask ``POST /api/handshake-check``, free of I/O."""

from __future__ import annotations

from collections import OrderedDict

from .limits import TokenBucket

__all__ = ["PROBE_BURST", "PROBE_EVERY", "ProbeLimit"]

PROBE_BURST = 10  # checks at once
PROBE_EVERY = 6.0  # seconds per check after the burst: 10 a minute
MAX_CLIENTS = 10_000  # addresses remembered; the least recently seen is forgotten first


class ProbeLimit:
    """A token bucket per client address, for a question that tells whether a token is valid.

    A real handshake costs a client a connection; without a limit the check would be
    the cheaper way to try tokens. The page asks once per failed connect, far below it.
    """

    def __init__(self, burst: int = PROBE_BURST, every: float = PROBE_EVERY, max_clients: int = MAX_CLIENTS) -> None:
        self._burst = burst
        self._rate = 1.0 / every
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, client: str, now: float) -> bool:
        """Spend one check of ``client`` (an address) at ``now`` (monotonic seconds); False: over the limit."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self._rate, self._burst, now)
            if len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket.take(now)
