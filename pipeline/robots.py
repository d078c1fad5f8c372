"""robots.txt, fetched once per host per worker and cached.

A robots.txt that cannot be fetched (timeout, connection error, 4xx, 5xx, not text) counts as
allowing everything, as common crawlers treat an unavailable file; `--ignore-robots-txt`
skips the check for corpora the user owns. Only the rules that apply to our agent are kept,
and the cache is bounded by the bytes those rules take, least recently used hosts going first,
so a crawl over many hosts with huge robots.txt files stays within a fixed memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from urllib.robotparser import RobotFileParser

from pipeline.netguard import split_url

_MAX_ROBOTS_BYTES = 512 * 1024
_RULE_OVERHEAD = 200  # bytes a parsed rule takes besides its path (about 150 measured)
_HOST_OVERHEAD = 2_000  # a parser, its entries and the cache's own bookkeeping


def robots_url(scheme: str, host: str, port: int) -> str:
    """The robots.txt URL of an origin; an IPv6 literal host goes in brackets."""
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}/robots.txt"


class RobotsCache:
    """`allowed(url)` per host, fetching each host's robots.txt once (other threads wait)."""

    def __init__(
        self,
        fetch_text: Callable[[str], str | None],
        agent: str,
        max_bytes: int = 64 * 1024 * 1024,
    ):
        self._fetch_text = fetch_text
        self._agent = agent
        self._max_bytes = max_bytes
        self._parsers: OrderedDict[str, tuple[RobotFileParser | None, int]] = OrderedDict()
        self._bytes = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def allowed(self, url: str) -> bool:
        scheme, host, port, _ = split_url(url)
        origin = f"{scheme}://{host}:{port}"
        with self._guard:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            parser = self._cached(origin)
            if parser is False:
                parser = self._load(robots_url(scheme, host, port))
                self._remember(origin, parser)
        return parser is None or parser.can_fetch(self._agent, url)

    def _cached(self, origin: str) -> RobotFileParser | None | bool:
        with self._guard:
            hit = self._parsers.get(origin)
            if hit is None:
                return False
            self._parsers.move_to_end(origin)
            return hit[0]

    def _remember(self, origin: str, parser: RobotFileParser | None) -> None:
        size = _size(parser)
        with self._guard:
            while self._parsers and self._bytes + size > self._max_bytes:
                evicted, (_, freed) = self._parsers.popitem(last=False)
                self._locks.pop(evicted, None)
                self._bytes -= freed
            self._parsers[origin] = (parser, size)
            self._bytes += size

    def _load(self, url: str) -> RobotFileParser | None:
        text = self._fetch_text(url)
        if text is None:
            return None
        parser = RobotFileParser()
        parser.parse(text[:_MAX_ROBOTS_BYTES].splitlines())
        _keep_our_rules(parser, self._agent)
        return parser


def _keep_our_rules(parser: RobotFileParser, agent: str) -> None:
    """Drop the groups of other crawlers: `can_fetch` reads the first group naming our agent,
    then the default one, and nothing else."""
    ours = next((entry for entry in parser.entries if entry.applies_to(agent)), None)
    parser.entries = [ours] if ours is not None else []


def _size(parser: RobotFileParser | None) -> int:
    """What one cached host costs, estimated from its kept rules."""
    if parser is None:
        return _HOST_OVERHEAD
    entries = [*parser.entries, parser.default_entry]
    rules = [rule for entry in entries if entry is not None for rule in entry.rulelines]
    return _HOST_OVERHEAD + sum(_RULE_OVERHEAD + len(rule.path) for rule in rules)
