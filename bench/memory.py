"""Memory benchmark: the local runner's peak RSS (the whole process tree, sampled) by list size.

    python bench/memory.py [--sizes 2000,20000,100000]

A fast loopback web of distinct photo-like pictures: a server process draws `ceil(n / 48)`
pictures (`demo.photos`, 360-480 px) once and serves URL i as picture i mod that count under
one of 48 variants (the 8 flips and rotations times 6 orders of the colour channels),
re-encoded as JPEG per request, so every URL is its own picture for the dedup (flips move the
perceptual hash, channel orders the colour signature) while the server holds a few MB. `beam_runner.py` crawls each list with its
defaults (dedup on) in a fresh process; its tree's RSS (it and every child, from /proc) is
sampled every 0.2 s. Prints one JSON line: per size the peak, the time, the ok count and the
bytes that crossed each GroupByKey (`pipeline.shuffle`'s counters, per input row and per kept
sample), and the peak of the largest list over that of the smallest.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shlex
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.photos import photo  # noqa: E402

VARIANTS = 48  # 8 dihedral transforms x 6 channel orders
_TRANSPOSES = (None, *Image.Transpose)  # the identity and Pillow's 7 flips and rotations
_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def variant(base: Image.Image, number: int) -> bytes:
    transpose, order = _TRANSPOSES[number % 8], _ORDERS[number // 8]
    image = base if transpose is None else base.transpose(transpose)
    image = Image.merge("RGB", [image.getchannel(c) for c in order])
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()


def serve(count: int, port_file: Path) -> None:
    """Serve /img/I.jpg for I < count until killed (run in its own process)."""
    bases = [photo(i, min_side=360, max_side=480) for i in range(math.ceil(count / VARIANTS))]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1].removesuffix(".jpg")
            if not name.isdigit() or int(name) >= count:
                self.send_error(404)
                return
            body = variant(bases[int(name) % len(bases)], int(name) // len(bases))
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            pass  # a client that hangs up mid-body is not news

    server = Server(("127.0.0.1", 0), Handler)
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (0 once it has exited)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            tasks = Path(f"/proc/{current}/task").iterdir()
            todo += [int(c) for t in tasks for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        rss = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
        total += int(rss.split()[1]) * 1024 if rss else 0
    return total


def crawl(urls: Path, out: Path, extra: list[str]) -> tuple[float, int, dict]:
    """(seconds, peak tree RSS, stats.json) of a default crawl of `urls` in a fresh process,
    which also writes its shuffle counters to OUT.shuffle.json."""
    subprocess.run(["rm", "-rf", str(out)], check=True)
    command = [sys.executable, __file__, "--crawl-child", f"{out}.shuffle.json", "--input"]
    command += [str(urls), "--output", str(out), "--allowed-networks", "127.0.0.0/8", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"the crawl of {urls} failed with {proc.returncode}")
    return seconds, peak, json.loads((out / "stats.json").read_text())


def crawl_child(counters: str, argv: list[str]) -> None:
    """`beam_runner.run(argv)` in this process, then its shuffle counters to `counters`."""
    import beam_runner
    from pipeline.shuffle import shuffle_counters

    result = beam_runner.run(argv)
    Path(counters).write_text(json.dumps(shuffle_counters(result)))


def shuffle_summary(counters: dict, stats: dict) -> dict:
    """Bytes shuffled per input row and per kept sample, in all and by the stage that did it."""
    total = sum(c.get("bytes", 0) for c in counters.values())
    rows, kept = stats["input_rows"], max(1, stats["samples"])
    return {
        "bytes_per_row": round(total / rows),
        "bytes_per_kept": round(total / kept),
        "by_stage_bytes_per_row": {k: round(c.get("bytes", 0) / rows) for k, c in counters.items()},
    }


def measure(size: int, work: Path, extra: list[str]) -> dict:
    port_file = work / f"port-{size}"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(size), "--port-file", str(port_file)]
    )
    try:
        while not (port_file.exists() and port_file.read_text()):
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port_file.read_text()}/img"
        urls = work / f"urls-{size}.parquet"
        rows = [{"url": f"{base}/{i}.jpg", "caption": f"picture {i}"} for i in range(size)]
        pq.write_table(pa.Table.from_pylist(rows), urls)
        out = work / f"out-{size}"
        seconds, peak, stats = crawl(urls, out, extra)
    finally:
        server.kill()
    shuffle = shuffle_summary(json.loads(Path(f"{out}.shuffle.json").read_text()), stats)
    ok = stats["status_counts"].get("ok", 0)
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 2**20), "ok": ok,
            "shuffle": shuffle}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--sizes", default="2000,20000,100000")
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "memory"))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--openwit-args", default="", help="options added to openwit's defaults")
    parser.add_argument("--crawl-child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.crawl_child:
        crawl_child(args.crawl_child, rest)
        return
    if args.serve:
        serve(args.serve, Path(args.port_file))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    extra = shlex.split(args.openwit_args)
    runs = {str(size): measure(size, work, extra) for size in sizes}
    smallest, largest = runs[str(sizes[0])], runs[str(sizes[-1])]
    ratio = round(largest["peak_rss_mb"] / smallest["peak_rss_mb"], 2)
    summary = {"openwit_args": extra, "runs": runs, "peak_ratio_largest_over_smallest": ratio}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
