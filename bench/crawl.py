"""Crawl benchmark: openwit's pipeline against img2dataset on the same loopback corpus.

    python bench/crawl.py [--images 5000] [--img2dataset .venv-bench/bin/img2dataset]

Generates JPEGs of 200-1000 px (cached under bench_out/), serves them from a separate process
on 127.0.0.1, then crawls the same URL list with img2dataset and with openwit, one after the
other, both to 256 px center-crop WebDataset shards, each as a fresh process timed end to end.
Prints one JSON line: pairs/s of each, their ratio, and where openwit's time goes.
img2dataset lives in its own venv (`python3 -m venv .venv-bench && .venv-bench/bin/pip install
img2dataset`): its pinned dependencies are not ours.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.corpus import COLORS, SHAPES, draw_shape, encode  # noqa: E402
from pipeline.fetch import Fetcher, FetchPolicy  # noqa: E402
from pipeline.imaging import ImageConfig, process_image  # noqa: E402


def make_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs of 200-1000 px per side, generated once and cached."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(count)]
    rng = random.Random(seed)
    for path in paths:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        size = (rng.randint(200, 1000), rng.randint(200, 1000))
        if not path.exists():
            path.write_bytes(encode(draw_shape(shape, color, "grey", size), "jpg"))
    return paths


def start_server(folder: Path, work: Path) -> tuple[subprocess.Popen, str]:
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


def run_img2dataset(
    binary: str, urls: Path, out: Path, processes: int, threads: int
) -> tuple[float, int]:
    seconds = timed(
        [
            binary,
            "--url_list",
            str(urls),
            "--input_format",
            "parquet",
            "--url_col",
            "url",
            "--caption_col",
            "caption",
            "--output_format",
            "webdataset",
            "--output_folder",
            str(out),
            "--image_size",
            "256",
            "--resize_mode",
            "center_crop",
            "--processes_count",
            str(processes),
            "--thread_count",
            str(threads),
            "--number_sample_per_shard",
            "10000",
            "--enable_wandb",
            "False",
        ]
    )
    ok = 0
    for stats in out.glob("*_stats.json"):
        ok += json.loads(stats.read_text()).get("successes", 0)
    return seconds, ok


def run_openwit(urls: Path, out: Path, extra: list[str]) -> tuple[float, int]:
    seconds = timed(
        [
            sys.executable,
            str(ROOT / "beam_runner.py"),
            "--input",
            str(urls),
            "--output",
            str(out),
            "--image-size",
            "256",
            "--resize-mode",
            "center_crop",
            "--samples-per-shard",
            "10000",
            "--allowed-networks",
            "127.0.0.0/8",
            *extra,
        ],
        cwd=ROOT,
    )
    return seconds, json.loads((out / "stats.json").read_text())["status_counts"].get("ok", 0)


def profile(base_url: str, names: list[str], threads: int) -> dict:
    """Where the per-image time goes: fetch (threaded, wall) and decode+resize+encode (CPU)."""
    fetcher = Fetcher(FetchPolicy(allowed_networks=("127.0.0.0/8",), per_host_connections=threads))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        bodies = list(pool.map(lambda n: fetcher.fetch(f"{base_url}/img/{n}"), names))
    fetch_s = time.perf_counter() - start
    config = ImageConfig(256, "center_crop")
    start = time.process_time()
    for body in bodies:
        process_image(body, config)
    process_s = time.process_time() - start
    return {
        "profile_images": len(names),
        "fetch_images_per_s_threaded": round(len(names) / fetch_s, 1),
        "decode_resize_encode_ms_per_image_cpu": round(1000 * process_s / len(names), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--img2dataset", default=str(ROOT / ".venv-bench/bin/img2dataset"))
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "crawl"))
    args = parser.parse_args()
    work = Path(args.work)
    paths = make_corpus(work.parent / f"corpus-{args.images}", args.images)
    server, base_url = start_server(paths[0].parent, work.parent)
    try:
        urls = work / "urls.parquet"
        urls.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"url": f"{base_url}/img/{p.name}", "caption": p.stem} for p in paths]
        pq.write_table(pa.Table.from_pylist(rows), urls)
        results: dict = {"images": len(rows), "cores": os.cpu_count()}
        # openwit keeps its polite default of 2 connections per host although the whole corpus
        # is one host here; img2dataset has no per-host cap.
        runs = {
            "img2dataset": lambda out: run_img2dataset(
                args.img2dataset, urls, out, args.processes, args.threads
            ),
            "openwit": lambda out: run_openwit(urls, out, ["--threads", str(args.threads)]),
            "openwit_2proc": lambda out: run_openwit(
                urls,
                out,
                [
                    "--threads",
                    str(args.threads),
                    f"--direct_num_workers={args.processes}",
                    "--direct_running_mode=multi_processing",
                ],
            ),
        }
        for name, runner in runs.items():
            out = work / name
            subprocess.run(["rm", "-rf", str(out)], check=True)
            seconds, ok = runner(out)
            results[f"{name}_seconds"] = round(seconds, 2)
            results[f"{name}_ok"] = ok
            results[f"{name}_pairs_per_s"] = round(len(rows) / seconds, 1)
        best = max(results["openwit_pairs_per_s"], results["openwit_2proc_pairs_per_s"])
        results["ratio_vs_img2dataset"] = round(best / results["img2dataset_pairs_per_s"], 3)
        results.update(profile(base_url, [p.name for p in paths[:300]], args.threads))
    finally:
        server.kill()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
