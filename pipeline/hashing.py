"""Per-element logic of the dedup stage: URL normalisation, image hashes, bands, matching, groups.

Plain functions, unit-tested without Beam; `pipeline.dedup` wires them into the graph.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import imagehash
import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageOps

from manifests.io import join, match_files, read_bytes

HASH_BITS = 64
EVAL_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

# Query parameters that only track the visitor: the same resource with or without them.
_TRACKING = re.compile(
    r"^(utm_\w+|fbclid|gclid|dclid|gbraid|wbraid|msclkid|yclid|mc_cid|mc_eid|igshid|_ga|_gl"
    r"|mkt_tok|oly_anon_id|oly_enc_id|vero_id|_hsenc|_hsmi|hsctatracking)$",
    re.IGNORECASE,
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")

HASH_FUNCTIONS: dict[str, Callable[[Image.Image], imagehash.ImageHash]] = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "ahash": imagehash.average_hash,
    "whash": imagehash.whash,
}


def normalize_url(url: str) -> str:
    """The URL that `url` names for dedup: scheme and host lower-cased, default port, fragment
    and tracking parameters dropped, percent-escapes upper-cased, an empty path as `/`.

    The path and the other parameters keep their case and order: servers may distinguish them.
    Text that does not parse as a URL comes back stripped, so it still dedups against itself.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if not scheme or not host:
        return url
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        netloc = f"{netloc}:{port}"
    if parts.username is not None:
        auth = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{auth}@{netloc}"
    params = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in params if not _TRACKING.match(k)]
    query = parts.query if len(kept) == len(params) else urlencode(kept)
    path = _ESCAPE.sub(lambda m: m.group(0).upper(), parts.path) or "/"
    query = _ESCAPE.sub(lambda m: m.group(0).upper(), query)
    return urlunsplit((scheme, netloc, path, query, ""))


@dataclass(frozen=True)
class ImageHashes:
    """What the dedup stage needs of one image."""

    digest: str  # sha256 of the encoded image (the crawl re-encodes every image)
    phash: int  # 64-bit perceptual hash as an unsigned int
    views: tuple[int, ...]  # hashes of the mirrored image and of centre zooms, when asked for
    colour: bytes  # `colour_signature`, or b"" when not asked for


@dataclass(frozen=True)
class HashSpec:
    """Which hashes the image dedup needs of an image. The crawl's decode processes compute
    them beside the resize, on every core, and the pairs carry them to the dedup stage."""

    hash_name: str = "phash"
    mirror: bool = False
    zoom: tuple[float, ...] = ()
    colour: bool = False

    def of(self, data: bytes, decoded: Image.Image | None = None) -> ImageHashes:
        """`hash_image` of `data` (whose pixels are `decoded`, when known) with these settings."""
        return hash_image(data, self.hash_name, self.mirror, self.zoom, self.colour, decoded)


_NOT_WORD = re.compile(r"[\W_]+")


def caption_key(caption: str) -> str:
    """A digest of the caption's words, case-folded, without punctuation or spacing: two copies
    of a picture whose captions give the same key say the same thing about it."""
    words = _NOT_WORD.sub(" ", caption.casefold()).strip()
    return hashlib.blake2b(words.encode(), digest_size=8).hexdigest()


HASH_SIDE = 64  # px: images are hashed from a decode about this large on its shorter side


def hashing_view(data: bytes, decoded: Image.Image | None = None) -> Image.Image:
    """The image `data` encodes, small for hashing: RGB, about HASH_SIDE px on its shorter side.
    `decoded` is that image when the caller still holds it (the crawl and the evaluation set
    hash the pixels they have just encoded, saving a decode: 0.25 ms of a 0.9 ms hash). A JPEG
    is otherwise decoded at that size by libjpeg's DCT scaling; the rest are box-reduced. Every
    hash here looks at 32 px or less, so the detail lost is detail they never saw."""
    if decoded is None:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (HASH_SIDE, HASH_SIDE))
            decoded = opened.convert("RGB")
    image = decoded.convert("RGB")
    factor = min(image.size) // HASH_SIDE
    return image.reduce(factor) if factor > 1 else image


def perceptual_hash(image: Image.Image, hash_name: str) -> int:
    """`hash_name`'s 64-bit hash of `image` as an unsigned int (bit order as imagehash's hex)."""
    bits = HASH_FUNCTIONS[hash_name](image).hash.ravel()  # row-major, first bit highest
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def centre_zoom(image: Image.Image, fraction: float) -> Image.Image:
    """The centre `fraction` of `image`'s width and height: what a copy cropped by 1 - fraction
    shows. Hashing it lets a cropped copy meet its original (pHash alone is not crop-tolerant).
    The crop box is fractional (resampled), so a small hashing view crops exactly as much."""
    width, height = image.size
    dx, dy = width * (1 - fraction) / 2, height * (1 - fraction) / 2
    size = (max(1, round(width * fraction)), max(1, round(height * fraction)))
    return image.resize(size, Image.Resampling.BILINEAR, box=(dx, dy, width - dx, height - dy))


# The colour signature: mean opponent chroma (red-green, yellow-blue) over a 4x4 grid, halved
# to fit int8. pHash sees only luminance, so recoloured drawings and flags with the same layout
# hash alike; their chroma tells them apart.
COLOUR_GRID = 4
ACHROMATIC = 8.0  # grey levels: an image whose chroma stays under this everywhere has no colour


def colour_signature(image: Image.Image) -> bytes:
    """2 x COLOUR_GRID^2 signed bytes: (R - G) / 2 and ((R + G) / 2 - B) / 2 per grid cell."""
    cells = np.asarray(
        image.convert("RGB").resize((COLOUR_GRID, COLOUR_GRID), Image.BOX), dtype=np.float32
    )
    red, green, blue = cells[..., 0], cells[..., 1], cells[..., 2]
    chroma = np.stack([red - green, (red + green) / 2 - blue], axis=-1) / 2
    return np.clip(np.rint(chroma), -127, 127).astype(np.int8).tobytes()


def colours_agree(a: bytes, b: bytes, max_distance: float | None) -> bool:
    """Whether two images' colours allow them to be copies: their mean chroma difference is at
    most `max_distance` grey levels, or one has no colour to compare (a greyscale copy of a
    colour image is still a copy). True when either signature is missing or the check is off."""
    if max_distance is None or not a or not b:
        return True
    left = np.frombuffer(a, dtype=np.int8).astype(np.float32) * 2
    right = np.frombuffer(b, dtype=np.int8).astype(np.float32) * 2
    if min(np.abs(left).max(), np.abs(right).max()) < ACHROMATIC:
        return True
    return float(np.abs(left - right).mean()) <= max_distance


def hash_image(
    data: bytes,
    hash_name: str,
    mirror: bool = False,
    zoom: tuple[float, ...] = (),
    colour: bool = False,
    decoded: Image.Image | None = None,
) -> ImageHashes:
    """Hash an encoded image (the shard's JPEG; `decoded`: its pixels, see `hashing_view`);
    raises OSError/ValueError when it is not a readable image. The digest is the file's sha256:
    the crawl re-encodes every image, so the same pixels give the same bytes whatever container
    or metadata they came in."""
    image = hashing_view(data, decoded)
    views = [ImageOps.mirror(image)] if mirror else []
    views += [centre_zoom(image, fraction) for fraction in zoom]
    return ImageHashes(
        digest=hashlib.sha256(data).hexdigest(),
        phash=perceptual_hash(image, hash_name),
        views=tuple(perceptual_hash(view, hash_name) for view in views),
        colour=colour_signature(image) if colour else b"",
    )


def to_hex(value: int) -> str:
    return f"{value:016x}"


def band_layout(bands: int) -> tuple[tuple[int, int], ...]:
    """Split the 64 bits into `bands` contiguous (shift, width) bands of near-equal width.

    Two hashes within Hamming distance t share at least one whole band when bands > t
    (pigeonhole); fewer, wider bands give smaller buckets at the price of that guarantee.
    """
    if not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be in 1..{HASH_BITS}, not {bands}")
    widths = [HASH_BITS // bands + (1 if i < HASH_BITS % bands else 0) for i in range(bands)]
    layout, shift = [], HASH_BITS
    for width in widths:
        shift -= width
        layout.append((shift, width))
    return tuple(layout)


def band_keys(value: int, layout: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """The (band index, band bits) bucket keys of a hash."""
    return [(i, (value >> shift) & ((1 << width) - 1)) for i, (shift, width) in enumerate(layout)]


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def close_pairs(
    left: Iterable[int], right: Iterable[int] | None, threshold: int, chunk: int = 2048
) -> Iterator[tuple[int, int]]:
    """Index pairs (i, j) with Hamming(left[i], right[j]) <= threshold, vectorised.

    With `right` None, pairs within `left` itself, i < j. Rows go in chunks, so a skewed
    bucket costs time but never more than chunk x len(right) memory.
    """
    a = np.fromiter(left, dtype=np.uint64)
    b = a if right is None else np.fromiter(right, dtype=np.uint64)
    for start in range(0, len(a), chunk):
        block = np.bitwise_count(a[start : start + chunk, None] ^ b[None, :]) <= threshold
        rows, cols = np.nonzero(block)
        rows = rows + start
        if right is None:
            upper = rows < cols
            rows, cols = rows[upper], cols[upper]
        yield from zip(rows.tolist(), cols.tolist(), strict=True)


class Groups:
    """Union-find over hashable nodes, each with a key; a group's name is its smallest key, so
    the result does not depend on the order in which matches were found."""

    def __init__(self) -> None:
        self._parent: dict = {}
        self._key: dict = {}

    def add(self, node, key: str) -> None:
        if node not in self._parent:
            self._parent[node] = node
            self._key[node] = key
        else:
            root = self.find(node)
            self._key[root] = min(self._key[root], key)

    def find(self, node):
        root = node
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[node] != root:
            self._parent[node], node = root, self._parent[node]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra
            self._key[ra] = min(self._key[ra], self._key[rb])

    def survivors(self) -> dict:
        """Each node's group name (the smallest key in its group)."""
        return {node: self._key[self.find(node)] for node in self._parent}


def eval_paths(spec: str) -> list[str]:
    """Image files and .tar shards named by `spec`: folders (searched recursively), files or
    globs, comma-separated. Fails fast when nothing usable is found."""
    found: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        inside = [m.path for r in FileSystems.match([join(part, "**")]) for m in r.metadata_list]
        found.extend(inside or match_files(part))
    usable = sorted({p for p in found if p.lower().endswith((*EVAL_EXTENSIONS, ".tar"))})
    if not usable:
        raise FileNotFoundError(f"no evaluation image or .tar shard in {spec!r}")
    return usable


def read_eval_images(path: str):
    """(id, encoded bytes) of the images in one file: the file itself, or a tar's members."""
    if not path.lower().endswith(".tar"):
        yield path, read_bytes(path)
        return
    with FileSystems.open(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(EVAL_EXTENSIONS):
                yield f"{path}/{member.name}", tar.extractfile(member).read()
