"""robots.txt, fetched once per host per worker and cached.

A robots.txt that cannot be fetched (timeout, connection error, 4xx, 5xx, not text) counts as
allowing everything, as common crawlers treat an unavailable file; `--ignore-robots-txt`
skips the check for corpora the user owns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.robotparser import RobotFileParser

from pipeline.netguard import split_url

_MAX_ROBOTS_BYTES = 512 * 1024


class RobotsCache:
    """`allowed(url)` per host, fetching each host's robots.txt once (other threads wait)."""

    def __init__(
        self, fetch_text: Callable[[str], str | None], agent: str, max_hosts: int = 100_000
    ):
        self._fetch_text = fetch_text
        self._agent = agent
        self._max_hosts = max_hosts
        self._parsers: dict[str, RobotFileParser | None] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def allowed(self, url: str) -> bool:
        scheme, host, port, _ = split_url(url)
        origin = f"{scheme}://{host}:{port}"
        with self._guard:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            if origin not in self._parsers:
                self._remember(origin, self._load(origin))
            parser = self._parsers[origin]
        return parser is None or parser.can_fetch(self._agent, url)

    def _remember(self, origin: str, parser: RobotFileParser | None) -> None:
        with self._guard:
            if len(self._parsers) >= self._max_hosts:  # bounded memory on huge host lists
                self._parsers.clear()
            self._parsers[origin] = parser

    def _load(self, origin: str) -> RobotFileParser | None:
        text = self._fetch_text(f"{origin}/robots.txt")
        if text is None:
            return None
        parser = RobotFileParser()
        parser.parse(text[:_MAX_ROBOTS_BYTES].splitlines())
        return parser
