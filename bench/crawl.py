"""Crawl benchmark: openwit against img2dataset on two loopback webs, same list, same run.

    python bench/crawl.py [--images 4000] [--webs latency,zero] [--img2dataset PATH]

The pictures are photo-like and distinct (`demo.photos`: JPEG, PNG and WebP of 300-1,500 px,
cached under bench_out/), so default dedup keeps them. Two webs serve them from a process of
their own:
  latency  `demo.latency_web`: many hosts on 127.0.0.x, log-normal time to first byte, a
           per-connection bandwidth cap, 3% of 404s and stalled hosts (accept, never answer);
  zero     `demo.server`: one host, no latency (the CPU-bound case).
Both tools run at their defaults: img2dataset with processes = cores, its own thread count and
one shard per process (its most favourable split); openwit with dedup on and only
`--allowed-networks` (`--openwit-args` adds options, to measure one). Both make 256 px
center-crop WebDataset shards. Prints one JSON line per
web: pairs/s of each, their ratio, the ok counts, CPU ms per URL of each tool's process tree,
and the CPU utilisation of the openwit run (CPU seconds / wall / cores, whole run and median of
1 s samples); a first line gives each tool's CPU ms per picture to decode, resize and encode.
img2dataset lives in its own venv (`python3 -m venv .venv-bench && .venv-bench/bin/pip install
img2dataset`): its pinned dependencies are not ours.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import latency_web, photos  # noqa: E402
from pipeline.imaging import ImageConfig, process_image  # noqa: E402

CORES = os.cpu_count() or 2


def make_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct photo-like pictures, generated once and cached."""
    return photos.corpus(folder, count, seed)


def start_server(folder: Path, work: Path) -> tuple[subprocess.Popen, str]:
    """The zero-latency web: `demo.server` on 127.0.0.1 in a process of its own."""
    url_file = work / "server_url"
    url_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.server", "--folder", str(folder), "--url-file", str(url_file)],
        cwd=ROOT,
    )
    for _ in range(600):
        if url_file.exists() and url_file.read_text():
            return proc, url_file.read_text()
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the corpus server did not start")


def timed(command: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )
    return time.perf_counter() - start


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (with the children they reaped), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += times.get(current, 0.0)
        stack += children.get(current, [])
    return total


def timed_with_cpu(command: list[str], **kwargs) -> tuple[float, float, float]:
    """Run `command`; (wall s, its tree's CPU s, median of 1 s samples of CPU s / s / cores)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    samples: list[float] = []
    tree = [0.0]  # the tree's CPU at the last sample: it counts a grandchild nobody waited for

    def sample() -> None:
        while proc.poll() is None:
            time.sleep(1.0)
            now = _tree_cpu(proc.pid)
            if now:
                samples.append((now - tree[0]) / CORES)
                tree[0] = now

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, command)
    wall = time.perf_counter() - start
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), tree[0])
    median = statistics.median(samples[1:-1]) if len(samples) > 2 else 0.0
    return wall, cpu, median


def run_img2dataset(binary: str, urls: Path, out: Path, rows: int) -> tuple[float, int, float]:
    per_shard = math.ceil(rows / CORES)  # one shard per process: every process busy, one tail
    seconds, cpu, _ = timed_with_cpu(
        [binary, "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
         "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
         "--image_size", "256", "--resize_mode", "center_crop", "--processes_count", str(CORES),
         "--number_sample_per_shard", str(per_shard), "--enable_wandb", "False"]
    )  # fmt: skip
    ok = sum(json.loads(s.read_text()).get("successes", 0) for s in out.glob("*_stats.json"))
    return seconds, ok, cpu


def run_openwit(urls: Path, out: Path, extra: list[str]) -> tuple[float, int, float, float]:
    """(wall s, ok rows, CPU s of the process tree, median CPU utilisation of 1 s samples)."""
    command = [sys.executable, str(ROOT / "beam_runner.py"), "--input", str(urls), "--output",
               str(out), "--image-size", "256", "--resize-mode", "center_crop",
               "--allowed-networks", "127.0.0.0/8", *extra]  # fmt: skip
    seconds, cpu, util_median = timed_with_cpu(command, cwd=ROOT)
    ok = json.loads((out / "stats.json").read_text())["status_counts"].get("ok", 0)
    return seconds, ok, cpu, util_median


_DECODE_COST = """
import io, sys, time
from img2dataset.resizer import Resizer
resize = Resizer(256, "center_crop", False)
start = time.process_time()
for path in sys.argv[1:]:
    resize(io.BytesIO(open(path, "rb").read()))
print(1000 * (time.process_time() - start) / (len(sys.argv) - 1))
"""


def decode_cost(paths: list[Path], img2dataset: str) -> dict:
    """CPU ms per picture to decode, resize to 256 center crop and encode: each tool's own code."""
    config = ImageConfig(256, "center_crop")
    start = time.process_time()
    for path in paths:
        process_image(path.read_bytes(), config)
    ours = 1000 * (time.process_time() - start) / len(paths)
    python = str(Path(img2dataset).parent / "python")
    theirs = subprocess.run([python, "-c", _DECODE_COST, *map(str, paths)], check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    return {"decode_ms_openwit": round(ours, 2), "decode_ms_img2dataset": round(float(theirs), 2)}


def compare(name: str, urls: list[str], work: Path, img2dataset: str, extra: list[str]) -> dict:
    """Crawl `urls` with both tools; the web's JSON result."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    url_file = folder / "urls.parquet"
    rows = [{"url": url, "caption": f"picture {i}"} for i, url in enumerate(urls)]
    pq.write_table(pa.Table.from_pylist(rows), url_file)
    result: dict = {"web": name, "urls": len(urls), "cores": CORES, "openwit_args": extra}
    result["load_before"] = round(os.getloadavg()[0], 2)
    subprocess.run(["rm", "-rf", str(folder / "img2dataset"), str(folder / "openwit")], check=True)
    seconds, ok, cpu = run_img2dataset(img2dataset, url_file, folder / "img2dataset", len(urls))
    result.update(img2dataset_seconds=round(seconds, 2), img2dataset_ok=ok,
                  img2dataset_pairs_per_s=round(len(urls) / seconds, 1),
                  img2dataset_cpu_ms_per_url=round(1000 * cpu / len(urls), 1))  # fmt: skip
    seconds, ok, cpu, util_median = run_openwit(url_file, folder / "openwit", extra)
    result.update(openwit_seconds=round(seconds, 2), openwit_ok=ok,
                  openwit_pairs_per_s=round(len(urls) / seconds, 1),
                  openwit_cpu_ms_per_url=round(1000 * cpu / len(urls), 1),
                  openwit_cpu_util=round(cpu / seconds / CORES, 3),
                  openwit_cpu_util_median=round(util_median, 3))  # fmt: skip
    result["ratio_vs_img2dataset"] = round(
        result["openwit_pairs_per_s"] / result["img2dataset_pairs_per_s"], 3
    )
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--webs", default="latency,zero")
    parser.add_argument("--hosts", type=int, default=latency_web.WebProfile.hosts)
    parser.add_argument("--stalled", type=int, default=latency_web.WebProfile.stalled)
    parser.add_argument("--img2dataset", default=str(ROOT / ".venv-bench/bin/img2dataset"))
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "crawl"))
    parser.add_argument("--openwit-args", default="", help="options added to openwit's defaults")
    args = parser.parse_args()
    extra = shlex.split(args.openwit_args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)  # the servers write their address here
    paths = make_corpus(work.parent / f"photos-{args.images}", args.images)
    names = [p.name for p in paths]
    print(json.dumps({"profile": len(paths[:300]), **decode_cost(paths[:300], args.img2dataset)}))
    for web in args.webs.split(","):
        if web == "latency":
            profile = latency_web.WebProfile(hosts=args.hosts, stalled=args.stalled)
            server, started = latency_web.start(paths[0].parent, profile, work)
            urls = started.urls(names)
        else:
            server, base_url = start_server(paths[0].parent, work)
            urls = [f"{base_url}/img/{n}" for n in names]
        try:
            print(json.dumps(compare(web, urls, work, args.img2dataset, extra)), flush=True)
        finally:
            server.kill()


if __name__ == "__main__":
    main()
