"""Many downloads in flight at once, polite per host: host-keyed queues feed a pool of I/O threads.

A thread takes only a request that may start now: its host has a free connection (at most
`per_host_connections`), the host's `per_host_delay` has passed since its last request, and, for
a retry, its backoff is over. So a busy or slow host never holds a global slot, a retry waits
its backoff without one, and a stalled host ties up only its own connections. Hosts are served
round-robin, so a host with many rows cannot starve the others.

A host that gives no answer at all (connection refused, or no response within the timeout) to
`FetchPolicy.host_failures` different rows in a row, with no answer in between, is given up for
the rest of the worker's life: its queued rows end at once with that error instead of each
waiting out its own deadline, which keeps a list with stalled hosts from running for hours.
While a host is suspect, its fresh rows go before its retries, so a stalled host is known
after about two timeouts. A server that answers, even with errors, is never given up.

The caller gets each finished download through `on_done`, called on the I/O thread that
finished it (with no lock held): it should hand the body to the CPU work and return.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.fetch import Fetcher, FetchError, Retryable
from pipeline.netguard import UrlRefused, split_url

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Download:
    """One URL's download: `body` when it succeeded, else `error` (FetchError or UrlRefused)."""

    url: str
    tag: object = None  # the caller's, returned untouched
    body: bytes | None = None
    error: Exception | None = None
    attempts: int = 0
    deadline: float = 0.0  # set when the first attempt starts, not while it queues
    host: str = ""
    unanswered: bool = False  # counted among its host's unanswered rows


@dataclass(eq=False)
class _Host:
    name: str
    fresh: deque = field(default_factory=deque)
    retries: list = field(default_factory=list)  # heap of (not_before, seq, Download)
    active: int = 0
    next_turn: float = 0.0
    failures: int = 0  # rows in a row that got no answer
    down: FetchError | None = None
    in_ready: bool = False
    timer_at: float | None = None

    @property
    def queued(self) -> int:
        return len(self.fresh) + len(self.retries)


class Downloads:
    """The host queues and their I/O threads; `submit` URLs, get them back through `on_done`."""

    def __init__(
        self,
        fetcher: Fetcher,
        threads: int,
        on_done: Callable[[Download], None],
    ):
        self._fetcher = fetcher
        self._per_host = max(1, fetcher.policy.per_host_connections)
        self._delay = fetcher.policy.per_host_delay
        self._host_failures = fetcher.policy.host_failures
        self._on_done = on_done
        self._hosts: dict[str, _Host] = {}
        self._ready: deque[_Host] = deque()
        self._timers: list[tuple[float, int, _Host]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"download-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, url: str, tag: object = None) -> None:
        """Queue `url`; its Download comes back through `on_done`, once, whatever happens."""
        job = Download(url, tag)
        try:
            job.host = split_url(url)[1]
        except UrlRefused as exc:
            job.error = exc
            self._on_done(job)
            return
        with self._cond:
            host = self._hosts.get(job.host)
            if host is None:
                host = self._hosts[job.host] = _Host(job.host)
            if host.down is None:
                host.fresh.append(job)
                self._schedule(host, time.monotonic())
                return
        job.error = host.down
        self._on_done(job)

    def close(self) -> None:
        """Stop the threads once their current attempt ends; queued downloads are abandoned."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _schedule(self, host: _Host, now: float) -> None:
        """Put `host` where a thread will find it: ready now, or at the time it may go."""
        if host.down is not None or host.active >= self._per_host or not host.queued:
            return
        when = host.next_turn if host.fresh else max(host.next_turn, host.retries[0][0])
        if when <= now:
            if not host.in_ready:
                host.in_ready = True
                self._ready.append(host)
                self._cond.notify()
        elif host.timer_at is None or when < host.timer_at:
            host.timer_at = when
            heapq.heappush(self._timers, (when, next(self._seq), host))
            if self._timers[0][2] is host:
                self._cond.notify()  # a sleeping thread must wake earlier than it planned

    def _take(self) -> Download | None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    when, _, host = heapq.heappop(self._timers)
                    if host.timer_at == when:
                        host.timer_at = None
                    self._schedule(host, now)
                if self._ready:
                    host = self._ready.popleft()
                    host.in_ready = False
                    job = self._start(host, now)
                    self._schedule(host, now)
                    if job is not None:
                        return job
                    continue
                self._cond.wait(self._timers[0][0] - now if self._timers else None)
        return None

    def _start(self, host: _Host, now: float) -> Download | None:
        if host.down is not None or host.active >= self._per_host or host.next_turn > now:
            return None
        retry_due = bool(host.retries) and host.retries[0][0] <= now
        if retry_due and not (host.failures and host.fresh):
            job = heapq.heappop(host.retries)[2]
        elif host.fresh:
            job = host.fresh.popleft()
        else:
            return None
        host.active += 1
        host.next_turn = now + self._delay
        job.attempts += 1
        if not job.deadline:
            job.deadline = now + self._fetcher.policy.deadline
        return job

    def _work(self) -> None:
        while (job := self._take()) is not None:
            self._attempt(job)
            del job  # an idle thread must not keep its last body and the caller's tag alive

    def _attempt(self, job: Download) -> None:
        retry = None
        try:
            job.body = self._fetcher.attempt(job.url, job.deadline)
        except Retryable as exc:
            retry = exc
        except (FetchError, UrlRefused) as exc:
            job.error = exc
        except Exception as exc:  # a bug must cost one row, not a thread
            log.exception("unexpected failure downloading %s", job.url)
            job.error = FetchError("internal", f"{type(exc).__name__}: {exc}")
        for done in self._finish(job, retry):
            self._on_done(done)

    def _finish(self, job: Download, retry: Retryable | None) -> list[Download]:
        """Book the attempt's outcome; the downloads that are now complete."""
        with self._cond:
            host = self._hosts[job.host]
            host.active -= 1
            now = time.monotonic()
            done = [job]
            if retry is not None and not retry.answered:
                if not job.unanswered:
                    job.unanswered = True
                    host.failures += 1
                if self._host_failures and host.failures >= self._host_failures:
                    done += self._give_up(host, retry)
            elif job.error is None or isinstance(job.error, FetchError):
                host.failures = 0  # the host answered
            if retry is not None:
                wait = self._fetcher.retry_wait(retry, job.attempts, job.deadline)
                if wait is None or host.down is not None:
                    job.error = FetchError(retry.kind, str(retry))
                else:
                    done.remove(job)
                    heapq.heappush(host.retries, (now + wait, next(self._seq), job))
            self._schedule(host, now)
            return done

    def _give_up(self, host: _Host, cause: Retryable) -> list[Download]:
        host.down = FetchError(
            cause.kind,
            f"host {host.name} given up: {host.failures} rows in a row got no answer ({cause})",
        )
        log.info("%s", host.down)
        abandoned = list(host.fresh) + [entry[2] for entry in host.retries]
        host.fresh.clear()
        host.retries.clear()
        for job in abandoned:
            job.error = host.down
        return abandoned
