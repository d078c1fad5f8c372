"""Download one URL politely and safely: `Fetcher.fetch(url) -> bytes`, or FetchError(kind).

robots.txt is honoured per host (see `robots`), and `per_host_delay` spaces one host's requests.
Connections go to the address `netguard` checked (every redirect hop too), through urllib3
pools shared by the worker's threads; a pool per host with `block=True` caps the connections
one host gets. Retries back off exponentially on timeouts, connection errors, 429 and 5xx, and
honour Retry-After; 4xx is final. The body is streamed and stopped at the size cap, and one
deadline bounds the whole fetch, retries and slow drips included.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from pipeline.netguard import (
    CachingResolver,
    Resolver,
    Target,
    UrlRefused,
    parse_networks,
    resolve_target,
    system_resolver,
)
from pipeline.robots import RobotsCache

log = logging.getLogger(__name__)

USER_AGENT = "openwit/0.1 (CLIP corpus builder; +https://github.com/openwit/openwit)"
ALL_ADDRESSES = ("0.0.0.0/0", "::/0")  # `--allow-private-addresses`: every network
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
_REDIRECTS = (301, 302, 303, 307, 308)
_NON_IMAGE_TYPE = re.compile(r"^(text/|application/(json|xml|xhtml|javascript|pdf))", re.I)
_CHUNK = 64 * 1024
_OBJECT_ADDRESS = re.compile(r"<[^<>]* (object )?at 0x[0-9a-fA-F]+>:?")


class FetchError(Exception):
    """A failed fetch; `kind` becomes the row's `error:<kind>` status."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FetchPolicy:
    """How to fetch: timeouts, retries, size cap, identity and the SSRF guard's exceptions."""

    timeout: float = field(default=10.0, metadata={"help": "connect/read timeout, s"})
    deadline: float = field(default=60.0, metadata={"help": "whole fetch per URL, s"})
    retries: int = field(default=2, metadata={"help": "retries of a timeout, 429 or 5xx"})
    backoff: float = field(default=0.5, metadata={"help": "first wait between retries, s"})
    max_retry_after: float = field(default=30.0, metadata={"help": "longest Retry-After, s"})
    max_bytes: int = field(default=20 * 1024 * 1024, metadata={"help": "largest body, bytes"})
    max_redirects: int = 5
    per_host_connections: int = 2
    user_agent: str = USER_AGENT
    honor_opt_out: bool = field(default=True, metadata={
        "flag": "--ignore-opt-out-headers",
        "help": "do not honour X-Robots-Tag noai/noimageai/noindex/noimageindex (own corpora only)",
    })  # fmt: skip
    respect_robots_txt: bool = field(default=True, metadata={
        "flag": "--ignore-robots-txt",
        "help": "do not fetch or honour robots.txt (only for corpora you own)",
    })  # fmt: skip
    robots_timeout: float = field(default=5.0, metadata={"help": "robots.txt fetch, s"})
    per_host_delay: float = field(default=0.0, metadata={"help": "seconds between requests"})
    host_failures: int = field(
        default=3,
        metadata={"help": "give a host up after this many connection failures in a row (0: never)"},
    )
    allowed_networks: tuple[str, ...] = field(default=(), metadata={
        "help": "comma-separated CIDRs allowed although not public, e.g. 127.0.0.0/8",
        "alias": ("--allow-private-addresses", ALL_ADDRESSES,
                  "allow loopback and private addresses (local corpora and tests); off by default"),
    })  # fmt: skip


class Retryable(Exception):
    """A failed attempt worth retrying (timeout, connection, 429, 5xx); `wait`: Retry-After.
    `answered`: the server did respond (a status line arrived) before the attempt failed."""

    def __init__(self, kind: str, message: str, wait: float | None = None, answered: bool = False):
        super().__init__(message)
        self.kind, self.wait, self.answered = kind, wait, answered


class Fetcher:
    """Thread-safe downloader; build one per worker (it holds the connection pools)."""

    def __init__(self, policy: FetchPolicy, resolver: Resolver = system_resolver):
        self.policy = policy
        self._resolver = CachingResolver(resolver)
        self._allowed = parse_networks(policy.allowed_networks)
        self._pools = urllib3.PoolManager(
            num_pools=512, maxsize=policy.per_host_connections, block=True
        )
        self._robots = (
            RobotsCache(self._fetch_robots_text, _product(policy.user_agent))
            if policy.respect_robots_txt
            else None
        )
        self._next_turn: dict[str, float] = {}
        self._turn_lock = threading.Lock()

    def fetch(self, url: str) -> bytes:
        """The body of `url` after redirects, or FetchError/UrlRefused with the failure's kind."""
        deadline = time.monotonic() + self.policy.deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.attempt(url, deadline)
            except Retryable as exc:
                wait = self.retry_wait(exc, attempt, deadline)
                if wait is None:
                    raise FetchError(exc.kind, str(exc)) from None
                log.debug("retrying %s in %.2fs after %s", url, wait, exc)
                time.sleep(wait)

    def attempt(self, url: str, deadline: float) -> bytes:
        """One attempt at `url` (redirects followed) by the monotonic `deadline`; Retryable when
        another attempt may succeed. Callers that schedule their own retries use this."""
        return self._follow_redirects(url, deadline)

    def retry_wait(self, exc: Retryable, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying after failed attempt number `attempt`, or None when
        the retries are spent or the wait would pass the deadline."""
        wait = exc.wait if exc.wait is not None else self._backoff(attempt)
        if attempt > self.policy.retries or time.monotonic() + wait >= deadline:
            return None
        return wait

    def close(self) -> None:
        self._pools.clear()

    def _backoff(self, attempt: int) -> float:
        return self.policy.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())

    def _fetch_robots_text(self, url: str) -> str | None:
        """A host's robots.txt as text, or None when it cannot be had (then all is allowed)."""
        deadline = time.monotonic() + self.policy.robots_timeout
        try:
            body = self._follow_redirects(url, deadline, robots_file=True)
        except (FetchError, UrlRefused, Retryable):
            return None
        return body.decode("utf-8", "replace")

    def _wait_turn(self, host: str) -> None:
        """Space the requests this worker sends one host by `per_host_delay` seconds."""
        if self.policy.per_host_delay <= 0:
            return
        with self._turn_lock:
            now = time.monotonic()
            turn = max(now, self._next_turn.get(host, 0.0))
            self._next_turn[host] = turn + self.policy.per_host_delay
        if turn > now:
            time.sleep(turn - now)

    def _follow_redirects(self, url: str, deadline: float, robots_file: bool = False) -> bytes:
        seen = {url}
        for _ in range(self.policy.max_redirects + 1):
            target = resolve_target(url, self._resolver, self._allowed)
            if not robots_file and self._robots is not None and not self._robots.allowed(url):
                raise FetchError("robots", f"robots.txt of {target.host} disallows {url}")
            self._wait_turn(target.host)
            response = self._request(target, deadline)
            complete = False
            try:
                if response.status in _REDIRECTS and response.headers.get("Location"):
                    url = urljoin(url, response.headers["Location"])
                    if url in seen:
                        raise FetchError("redirect_loop", f"redirect loop at {url}")
                    seen.add(url)
                    continue
                if robots_file:
                    if response.status != 200:
                        raise FetchError(f"http_{response.status}", "no robots.txt")
                else:
                    self._check_response(response)
                body = self._read_body(response, deadline)
                complete = True
                return body
            finally:
                _release(response, complete)
        raise FetchError("too_many_redirects", f"more than {self.policy.max_redirects} redirects")

    def _request(self, target: Target, deadline: float) -> urllib3.BaseHTTPResponse:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timeout", "deadline exceeded")
        timeout = urllib3.Timeout(
            connect=min(self.policy.timeout, remaining), read=min(self.policy.timeout, remaining)
        )
        pool = self._pools.connection_from_host(
            target.address,
            target.port,
            target.scheme,
            pool_kwargs={"server_hostname": target.host, "assert_hostname": target.host}
            if target.scheme == "https"
            else None,
        )
        headers = {"Host": target.host_header, "User-Agent": self.policy.user_agent}
        try:
            return pool.urlopen(
                "GET",
                target.path,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                timeout=timeout,
                assert_same_host=False,
                pool_timeout=max(remaining, 0.001),
            )
        except NewConnectionError as exc:  # urllib3 files it under timeouts; it is a refusal
            raise Retryable("connection", f"connection failed: {_describe(exc)}") from None
        except (ReadTimeoutError, Urllib3Timeout):
            raise Retryable("timeout", f"no response within {self.policy.timeout:g}s") from None
        except (ProtocolError, MaxRetryError, Urllib3Error, OSError) as exc:
            raise Retryable("connection", f"connection failed: {_describe(exc)}") from None

    def _check_response(self, response: urllib3.BaseHTTPResponse) -> None:
        status = response.status
        if status == 429 or status >= 500:
            wait = _retry_after(response.headers.get("Retry-After"), self.policy.max_retry_after)
            raise Retryable(f"http_{status}", f"HTTP {status}", wait, answered=True)
        if status != 200:
            raise FetchError(f"http_{status}", f"HTTP {status}")
        if self.policy.honor_opt_out:
            directives = opt_out_directives(
                response.headers.getlist("X-Robots-Tag"), self.policy.user_agent
            )
            if directives:
                raise FetchError("opted_out", f"X-Robots-Tag: {','.join(sorted(directives))}")
        content_type = response.headers.get("Content-Type", "")
        if _NON_IMAGE_TYPE.match(content_type):
            raise FetchError("not_image", f"Content-Type {content_type!r}")
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.policy.max_bytes:
            raise FetchError("too_large", f"Content-Length {length} over {self.policy.max_bytes}")

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        chunks, size = [], 0
        try:
            while True:
                chunk = response.read1(_CHUNK)  # what has arrived: a drip cannot hide the deadline
                if not chunk:
                    break
                size += len(chunk)
                if size > self.policy.max_bytes:
                    raise FetchError("too_large", f"body over {self.policy.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", "deadline exceeded while reading the body")
                chunks.append(chunk)
        except (ReadTimeoutError, Urllib3Timeout):
            message = f"body stalled for {self.policy.timeout:g}s"
            raise Retryable("timeout", message, answered=True) from None
        except ProtocolError as exc:
            kind = "truncated" if "IncompleteRead" in repr(exc) else "connection"
            raise Retryable(kind, f"body broken: {_describe(exc)}", answered=True) from None
        return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    """The exception's message without object addresses, so reruns write identical manifests."""
    return _OBJECT_ADDRESS.sub("", str(exc)).strip(" :")


def _release(response: urllib3.BaseHTTPResponse, complete: bool) -> None:
    """Return the connection to its pool only when the response was read to its end; a
    connection with an unread body left on it would corrupt the next request."""
    if not complete:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= _CHUNK:
            response.drain_conn()
        else:
            response.close()
    response.release_conn()


def _product(user_agent: str) -> str:
    """The product token of a user agent (`openwit` of `openwit/0.1 (...)`), lower-cased."""
    return user_agent.split("/", 1)[0].strip().lower()


def opt_out_directives(values: list[str], user_agent: str) -> set[str]:
    """The opt-out directives among X-Robots-Tag values that apply to us.

    A value may be scoped to one crawler (`otherbot: noindex`); it applies when the scope is
    our product token or `*`. `unavailable_after: <date>` is a directive, not a scope.
    """
    product = _product(user_agent)
    found: set[str] = set()
    for value in values:
        scope, _, rest = value.partition(":")
        scoped = bool(rest) and scope.strip().lower() not in ("unavailable_after",)
        if scoped and scope.strip().lower() not in (product, "*"):
            continue
        directives = rest if scoped else value
        found |= {d.strip().lower() for d in directives.split(",")} & OPT_OUT_DIRECTIVES
    return found


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - time.time(), 0.0), cap)


__all__ = [
    "FetchError",
    "FetchPolicy",
    "Fetcher",
    "Retryable",
    "UrlRefused",
    "opt_out_directives",
]
