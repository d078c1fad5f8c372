"""Hostile-input benchmark: the rows and memory issue 16 measured, on this checkout and a baseline.

    python bench/bad_input.py [--baseline /path/to/an/older/checkout]

Each case runs in a fresh process with the checkout's code first on sys.path:
- jsonl_rows, tsv_rows: rows a 6-row list becomes through the read stage (a lone surrogate
  escape and 100,000-deep nesting in the JSONL; a caption opening with `"` in the TSV);
- check_columns_mb: peak RSS over the process's RSS with its imports done, checking the URL
  column of a ~400 kB .csv.gz that expands to 400 MB;
- decode_mb: the same for decoding a ~330 kB 9000x9000 RGBA PNG into the shard's JPEG.
Prints one JSON line: each figure for this checkout, the baseline's and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PRELUDE = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from manifests.readers import InputSpec, check_columns, plan_units
from pipeline.imaging import ImageConfig, process_image
import pipeline.read as read
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""
_ROWS = (
    _PRELUDE
    + """
from apache_beam.testing.test_pipeline import TestPipeline
import apache_beam as beam
result = sys.argv[2] + ".rows"
with TestPipeline() as p:
    out = p | read.ReadPairs([sys.argv[2]], InputSpec())
    pairs = out["pairs"] if isinstance(out, dict) else out
    pairs | beam.combiners.Count.Globally() | beam.Map(lambda n: open(result, "w").write(str(n)))
print(open(result).read())
"""
)
_CHECK = (
    _PRELUDE
    + """
base = rss_mb()
check_columns(sys.argv[2], InputSpec())
print(json.dumps(rss_mb() - base))
"""
)
_DECODE = (
    _PRELUDE
    + """
data = open(sys.argv[2], "rb").read()
base = rss_mb()
try:
    process_image(data, ImageConfig())
except Exception as exc:
    print(type(exc).__name__, exc, file=sys.stderr)
print(json.dumps(rss_mb() - base))
"""
)


def write_inputs(folder: Path) -> dict[str, Path]:
    lines = [json.dumps({"url": f"http://a/{i}.jpg", "caption": f"c{i}"}) for i in range(6)]
    lines[1] = '{"url": "http://a/1.jpg", "caption": "half an emoji \\ud83d"}'
    lines[3] = '{"url": "http://a/3.jpg", "caption": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (folder / "six.jsonl").write_text("\n".join(lines) + "\n")
    rows = [f"http://a/{i}.jpg\tcaption {i}" for i in range(6)]
    rows[1] = 'http://a/1.jpg\t"a caption that opens with a quote'
    (folder / "six.tsv").write_text("url\tcaption\n" + "\n".join(rows) + "\n")
    packer = zlib.compressobj(9, wbits=31)  # gzip framing, streamed: never 800 MB in memory here
    with open(folder / "big.csv.gz", "wb") as out:
        out.write(packer.compress(b"url,caption\n"))
        chunk = (b"http://example.com/a.jpg," + b"a" * 4000 + b"\n") * 100
        for _ in range(1000):
            out.write(packer.compress(chunk))
        out.write(packer.flush())
    (folder / "rgba.png").write_bytes(_rgba_png(9000))
    return {name: folder / name for name in ("six.jsonl", "six.tsv", "big.csv.gz", "rgba.png")}


def _rgba_png(side: int) -> bytes:
    """A transparent side x side RGBA PNG, compressed row by row."""
    packer = zlib.compressobj(9)
    row = b"\x00" + b"\x00\x00\x00\x00" * side
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = side.to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def measure(checkout: Path, inputs: dict[str, Path]) -> dict:
    def child(script: str, path: Path) -> float:
        done = subprocess.run(
            [sys.executable, "-c", script, str(checkout), str(path)],
            cwd=checkout,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    return {
        "jsonl_rows": child(_ROWS, inputs["six.jsonl"]),
        "tsv_rows": child(_ROWS, inputs["six.tsv"]),
        "check_columns_mb": round(child(_CHECK, inputs["big.csv.gz"]), 1),
        "decode_mb": round(child(_DECODE, inputs["rgba.png"]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_inputs(Path(tmp))
        sizes = {name: path.stat().st_size for name, path in inputs.items()}
        ours = measure(ROOT, inputs)
        result = {"rows_written": 6, "input_bytes": sizes, "ours": ours}
        if args.baseline:
            theirs = measure(args.baseline.resolve(), inputs)
            result["baseline"] = theirs
            result["ratio"] = {
                k: round(ours[k] / theirs[k], 3) if theirs[k] else None for k in ours
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
