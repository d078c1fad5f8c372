"""Training data: the pipeline's WebDataset shards as an endless, deterministic batch stream.

Epoch e visits the shards in an order drawn from (seed, e), the same on every rank, and rank r
reads every world-th of them; a seeded shuffle buffer mixes samples. Every random choice (the
order, the buffer, each crop) comes from the seed, the epoch and the position in the epoch, so
the stream is a pure function of them and a run resumes exactly by replaying its position.
Images are decoded with Pillow (any mode, transparency onto white, as the pipeline does),
cropped and normalised with numpy; a sample that cannot be decoded is skipped and counted.
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from queue import Queue

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from pipeline.imaging import to_rgb

log = logging.getLogger(__name__)
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def expand_shards(pattern: str) -> list[str]:
    """Shard paths from brace patterns (`{00000..00009}`), globs and comma-separated lists."""
    paths: list[str] = []
    for part in pattern.split(","):
        for expanded in braceexpand(part.strip()):
            matches = (
                sorted(glob.glob(expanded)) if any(c in expanded for c in "*?[") else [expanded]
            )
            paths.extend(matches)
    if not paths:
        raise FileNotFoundError(f"no shard matches {pattern!r}")
    return paths


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def _already_split(shards):
    """The stream splits shards by rank itself (`_shards_for`); webdataset must not again."""
    return shards


def normalise(image: Image.Image) -> torch.Tensor:
    array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD  # (H, W, 3)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # (3, H, W)


def preprocess_eval(image: Image.Image, image_size: int) -> torch.Tensor:
    """RGB, shorter side to `image_size`, centre crop, normalised: (3, S, S)."""
    image = to_rgb(image)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    box = (left, top, left + side, top + side)
    return normalise(image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box))


def random_resized_crop(
    image: Image.Image, size: int, rng: random.Random, scale=(0.6, 1.0)
) -> torch.Tensor:
    """A random crop of `scale` of the area, aspect 3/4..4/3, resized to (3, size, size)."""
    image = to_rgb(image)
    area = image.width * image.height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < w <= image.width and 0 < h <= image.height:
            left, top = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
            box = (left, top, left + w, top + h)
            return normalise(image.resize((size, size), Image.Resampling.BICUBIC, box=box))
    return preprocess_eval(image, size)


@dataclass
class DataState:
    """Where the stream is: the epoch and how many samples of it were consumed."""

    epoch: int = 0
    consumed: int = 0


class ShardStream:
    """Endless batches of (images (B,3,S,S), captions list[str]) for one rank."""

    def __init__(self, pattern: str, batch_size: int, image_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1, shuffle_buffer: int = 1000):  # fmt: skip
        self.shards = expand_shards(pattern)
        self.batch_size, self.image_size, self.seed = batch_size, image_size, seed
        self.rank, self.world, self.shuffle_buffer = rank, world, shuffle_buffer
        self.state = DataState()
        self.skipped = 0

    def _shards_for(self, epoch: int) -> list[str]:
        order = list(self.shards)
        random.Random(_seed(self.seed, "shards", epoch)).shuffle(order)
        mine = order[self.rank :: self.world]
        return mine or order[self.rank % len(order) :: len(order)]

    def _samples(self, epoch: int) -> Iterator[dict]:
        """The epoch's raw samples in their shuffled order (unreadable shards are skipped)."""
        reader = wds.WebDataset(self._shards_for(epoch), shardshuffle=False, empty_check=False,
                                handler=self._skip_shard, nodesplitter=_already_split,
                                workersplitter=_already_split)  # fmt: skip
        rng, buffer = random.Random(_seed(self.seed, "buffer", epoch, self.rank)), []
        for sample in reader:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def captions(self, limit: int) -> list[str]:
        """The first `limit` captions of epoch 0's order (what the tokenizer is trained on)."""
        samples = itertools.islice(self._samples(0), limit)
        return [sample["txt"].decode("utf-8", "replace") for sample in samples]

    def _skip_shard(self, exc: Exception) -> bool:
        self.skipped += 1
        log.warning("skipping an unreadable shard or sample: %s", exc)
        return True

    def _decode(self, sample: dict, position: int) -> tuple[torch.Tensor, str] | None:
        try:
            image = Image.open(io.BytesIO(sample["jpg"]))
            image.load()
            caption = sample["txt"].decode("utf-8")
        except Exception as exc:  # a corrupt sample costs itself, never the run
            self.skipped += 1
            if self.skipped <= 10 or self.skipped % 1000 == 0:
                log.warning(
                    "skipped sample %s (%d so far): %s", sample.get("__key__"), self.skipped, exc
                )
            return None
        rng = random.Random(_seed(self.seed, "crop", self.state.epoch, self.rank, position))
        return random_resized_crop(image, self.image_size, rng), caption

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str], DataState]]:
        """Batches with the stream position right after each (what a checkpoint stores)."""
        images, captions = [], []
        while True:
            epoch, start = self.state.epoch, self.state.consumed
            produced = 0
            for position, sample in enumerate(self._samples(epoch)):
                if position < start:
                    continue  # replaying a resumed position: no decoding
                decoded = self._decode(sample, position)
                self.state.consumed = position + 1
                produced += 1
                if decoded is None:
                    continue
                images.append(decoded[0])
                captions.append(decoded[1])
                if len(images) == self.batch_size:
                    yield torch.stack(images), captions, DataState(**vars(self.state))
                    images, captions = [], []
            if produced == 0 and start == 0:
                raise RuntimeError("the shards hold no readable sample")
            self.state = DataState(epoch + 1, 0)


def prefetch(batches: Iterator, depth: int = 2) -> Iterator:
    """Decode the next batches in a thread while the model trains on this one (Pillow and
    numpy release the GIL), so data loading hides behind compute."""
    queue: Queue = Queue(maxsize=depth)
    done = object()

    def fill() -> None:
        try:
            for batch in batches:
                queue.put(batch)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(exc)
        queue.put(done)

    threading.Thread(target=fill, daemon=True, name="prefetch").start()
    while (item := queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
