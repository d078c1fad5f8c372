"""A loopback web that behaves like the real one, for crawl benchmarks and tests.

Many hosts, one server per loopback address (127.0.0.2, 127.0.0.3, ...), so per-host limits
are exercised as on the web. Every response waits a log-normal time to first byte (median a
few hundred milliseconds, a long tail), then the body leaves at a per-connection bandwidth
cap. Some hosts are stalled: they accept connections and never answer. Names that are not in
the corpus get a 404. All hosts share one asyncio loop in a process of their own (`serve`),
so the crawler under test does not pay for the servers' CPU.

    python -m demo.latency_web --folder IMAGES --hosts 48 --stalled 2 --url-file web.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
ROBOTS_TXT = b"User-agent: *\nDisallow: /private/\n"
_CHUNK = 16 * 1024


@dataclass(frozen=True)
class WebProfile:
    """How the web behaves: hosts, latency, bandwidth, failures."""

    hosts: int = 48
    stalled: int = 2  # hosts that accept and never answer
    ttfb_median: float = 0.3  # seconds to the first byte, log-normal
    ttfb_sigma: float = 0.8  # p99 = median * e^(2.33 sigma), ~1.9 s
    bandwidth: float = 2e6  # bytes per second per connection
    seed: int = 0


@dataclass(frozen=True)
class Web:
    """A started web: the base URL of every host and which of them stall."""

    hosts: list[str]
    stalled: list[str]

    def urls(self, names: list[str], missing_share: float = 0.03, seed: int = 0) -> list[str]:
        """One URL per name, spread over the hosts; `missing_share` of them 404."""
        rng = random.Random(seed)
        out = []
        for name in names:
            host = rng.choice(self.hosts)
            out.append(f"{host}/img/{'missing-' if rng.random() < missing_share else ''}{name}")
        return out


class _Host:
    def __init__(self, images: dict[str, bytes], profile: WebProfile, stalled: bool, rng):
        self.images, self.profile, self.stalled, self.rng = images, profile, stalled, rng

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.stalled:
                    await reader.read()  # hold the connection until the client gives up
                    return
                keep_alive = await self._respond(head, writer)
                if not keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _respond(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        close = any(line.lower().replace(" ", "") == "connection:close" for line in lines[1:])
        profile = self.profile
        await asyncio.sleep(self.rng.lognormvariate(0, profile.ttfb_sigma) * profile.ttfb_median)
        name = path.rsplit("/", 1)[-1]
        if path == "/robots.txt":
            status, kind, body = 200, "text/plain", ROBOTS_TXT
        elif path.startswith("/img/") and name in self.images:
            status, kind, body = (
                200,
                TYPES.get(name.rsplit(".", 1)[-1], "image/jpeg"),
                self.images[name],
            )
        else:
            status, kind, body = 404, "text/plain", b"not found"
        reason = "OK" if status == 200 else "Not Found"
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}"
            f"\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n".encode("latin-1")
        )
        for start in range(0, len(body), _CHUNK):
            chunk = body[start : start + _CHUNK]
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(len(chunk) / profile.bandwidth)
        await writer.drain()
        return not close


async def _serve(images: dict[str, bytes], profile: WebProfile, url_file: Path) -> None:
    rng = random.Random(profile.seed)
    stalled_ids = set(rng.sample(range(profile.hosts), profile.stalled))
    servers, hosts, stalled = [], [], []
    for i in range(profile.hosts):
        host = _Host(images, profile, i in stalled_ids, random.Random(f"{profile.seed}-{i}"))
        server = await asyncio.start_server(host.handle, f"127.0.0.{i + 2}", 0, backlog=1024)
        servers.append(server)
        address, port = server.sockets[0].getsockname()[:2]
        base = f"http://{address}:{port}"
        hosts.append(base)
        if i in stalled_ids:
            stalled.append(base)
    tmp = url_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"hosts": hosts, "stalled": stalled}))
    tmp.replace(url_file)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def load_images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix[1:] in TYPES}


def serve(folder: Path, profile: WebProfile, url_file: Path) -> None:
    """Serve `folder`'s images on `profile.hosts` loopback hosts until killed."""
    asyncio.run(_serve(load_images(folder), profile, url_file))


def start(folder: Path, profile: WebProfile, work: Path) -> tuple[subprocess.Popen, Web]:
    """Start the web in a process of its own; returns the process (kill it when done)."""
    url_file = work / "latency_web.json"
    url_file.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in asdict(profile).items()]
    command = [sys.executable, "-m", "demo.latency_web", "--folder", str(folder), *flags]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([*command, "--url-file", str(url_file)], cwd=root)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if url_file.exists():
            return proc, Web(**json.loads(url_file.read_text()))
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the latency web did not start")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--url-file", type=Path, required=True)
    for name, default in asdict(WebProfile()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    folder, url_file = args.pop("folder"), args.pop("url_file")
    serve(folder, WebProfile(**args), url_file)


if __name__ == "__main__":
    main()
