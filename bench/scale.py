"""Scale benchmark: the whole graph (crawl + filters) with 1 and 2 worker processes.

    python bench/scale.py [--images 3000]

Serves the cached bench corpus (see bench/crawl.py) from another process and runs
beam_runner with `--direct_num_workers=1` and `=2 --direct_running_mode=multi_processing`,
each a fresh process timed end to end. Prints one JSON line: pairs/s of each and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crawl import ROOT, make_corpus, start_server, timed  # noqa: E402

MODES = {
    "1_worker": ["--direct_num_workers=1"],
    "2_workers": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--work", default=str(ROOT / "bench_out" / "scale"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = make_corpus(work.parent / f"corpus-{args.images}", args.images)
    server, base_url = start_server(paths[0].parent, work.parent)
    try:
        urls = work / "urls.parquet"
        rows = [{"url": f"{base_url}/img/{p.name}", "caption": f"a picture of shape {p.stem}"}
                for p in paths]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), urls)
        results: dict = {"images": len(rows)}
        for name, extra in MODES.items():
            out = work / name
            subprocess.run(["rm", "-rf", str(out)], check=True)
            seconds = timed([
                sys.executable, str(ROOT / "beam_runner.py"), "--input", str(urls),
                "--output", str(out), "--allowed-networks", "127.0.0.0/8",
                "--per-host-connections", "32", "--filters", "caption,image", *extra,
            ], cwd=ROOT)  # fmt: skip
            ok = json.loads((out / "stats.json").read_text())["status_counts"].get("ok", 0)
            results[f"{name}_seconds"] = round(seconds, 2)
            results[f"{name}_pairs_per_s"] = round(len(rows) / seconds, 1)
            results[f"{name}_ok"] = ok
        results["speedup_2_vs_1"] = round(
            results["2_workers_pairs_per_s"] / results["1_worker_pairs_per_s"], 3
        )
    finally:
        server.kill()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
