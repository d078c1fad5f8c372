"""Training data: the pipeline's WebDataset shards as an endless, deterministic batch stream.

The shards (read by `trainer.shards`) are visited in epoch e in an order drawn from (seed, e),
the same on every rank, split by rank and by DataLoader worker; a seeded buffer shuffles
samples.
Every random choice (the order, the buffer, each crop) comes from the seed, the epoch and the
position in the epoch, so the stream is a pure function of them and a run resumes exactly,
mid-epoch, by replaying its position. Images are decoded with Pillow (any mode, transparency
onto white, as the pipeline does), cropped and normalised with numpy; undecodable samples and
unreadable shards are skipped, logged at a limited rate and counted.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from queue import Queue

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.imaging import to_rgb
from trainer.shards import (
    IMAGE_KEYS,
    MAX_MEMBER_BYTES,
    check_filesystems,
    expand_shards,
    read_shards,
)

log = logging.getLogger(__name__)
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CROP_SCALE = (0.6, 1.0)  # the share of the image's area a training crop keeps
Texts = list[str] | torch.Tensor  # captions, or their (B, T) tokens


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def normalise(image: Image.Image) -> torch.Tensor:
    array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD  # (H, W, 3)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # (3, H, W)


def preprocess_eval(image: Image.Image, image_size: int) -> torch.Tensor:
    """RGB, shorter side resized to `image_size` (bicubic), centre crop, normalised: (3, S, S).

    The arithmetic of CLIP's eval transform as transformers' CLIPImageProcessor does it (the
    longer side truncated, the crop's offset floored), so an exported model sees the same
    pixels in transformers as here.
    """
    image = to_rgb(image)
    short, long = min(image.size), max(image.size)
    resized = (image_size, int(image_size * long / short))
    image = image.resize(resized if image.width <= image.height else resized[::-1],
                         Image.Resampling.BICUBIC)  # fmt: skip
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    return normalise(image.crop((left, top, left + image_size, top + image_size)))


def random_resized_crop(
    image: Image.Image, size: int, rng: random.Random, scale=CROP_SCALE
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
    """Where one lane of a rank's stream is: its epoch, the samples of that epoch consumed, and
    the samples (undecodable) and read errors (unreadable shards) skipped so far."""

    epoch: int = 0
    consumed: int = 0
    skipped: int = 0
    read_errors: int = 0


def _log_limited(count: int, message: str, *args: object) -> None:
    """The first ten, then every thousandth: a corrupt corpus must not flood the log."""
    if count <= 10 or count % 1000 == 0:
        log.warning(message, *args)


class ShardStream(IterableDataset):
    """Endless, deterministic batches of (images (B,3,S,S), captions or tokens) for one rank.

    The rank's share is read by `workers` lanes (DataLoader worker processes; 0 = one lane in
    a background thread). Epoch e orders the shards by (seed, e), the same on every rank,
    shuffled or, with `resample`, drawn with replacement; lane l of rank r reads every
    (world x lanes)-th shard from r x lanes + l, or, with fewer shards than lanes, every such
    sample of all of them. The DataLoader serves the lanes round-robin, so the batch order
    and each lane's position (`lanes`, `served`) say exactly where the stream is.
    """

    def __init__(self, pattern: str, batch_size: int, image_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1, shuffle_buffer: int = 1000, workers: int = 0,
                 resample: bool = False,
                 tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
                 max_member_bytes: int = MAX_MEMBER_BYTES):  # fmt: skip
        self.shards = expand_shards(pattern)
        check_filesystems(self.shards)
        self.batch_size, self.image_size, self.seed = batch_size, image_size, seed
        self.rank, self.world, self.shuffle_buffer = rank, world, shuffle_buffer
        self.workers, self.resample, self.tokenizer = workers, resample, tokenizer
        self.max_member_bytes = max_member_bytes
        self.lanes = [DataState() for _ in range(max(1, workers))]
        self.served = 0  # batches handed to the training loop

    @property
    def skipped(self) -> int:
        return sum(lane.skipped for lane in self.lanes)

    @property
    def read_errors(self) -> int:
        return sum(lane.read_errors for lane in self.lanes)

    def position(self) -> dict:
        """What a checkpoint stores to resume this rank's stream after the last served batch."""
        return {"lanes": [asdict(lane) for lane in self.lanes], "served": self.served}

    def restore(self, position: dict) -> None:
        if len(position["lanes"]) != len(self.lanes):
            raise ValueError(f"the checkpoint's stream had {len(position['lanes'])} lanes per "
                             f"rank: resume with --workers {len(position['lanes'])}")  # fmt: skip
        self.lanes = [DataState(**lane) for lane in position["lanes"]]
        self.served = position["served"]

    def _plan(self, lane: int, epoch: int) -> tuple[list[str], int, int]:
        """The lane's shards in epoch `epoch`, and which of their samples it keeps (i % n == k)."""
        rng = random.Random(_seed(self.seed, "shards", epoch))
        if self.resample:
            order = rng.choices(self.shards, k=len(self.shards))
        else:
            order = rng.sample(self.shards, len(self.shards))
        index, total = self.rank * len(self.lanes) + lane, self.world * len(self.lanes)
        if len(order) >= total:
            return order[index::total], 1, 0
        return order, total, index

    def _samples(self, lane: int, state: DataState) -> Iterator[dict]:
        """The lane's raw samples of `state.epoch` in their shuffled order."""

        def read_error(exc: Exception) -> bool:
            state.read_errors += 1
            _log_limited(state.read_errors, "skipping unreadable shard data (%d so far): %s",
                         state.read_errors, exc)  # fmt: skip
            return True

        shards, every, keep = self._plan(lane, state.epoch)
        reader = read_shards(shards, read_error, self.max_member_bytes)
        rng = random.Random(_seed(self.seed, "buffer", state.epoch, self.rank, lane))
        buffer: list[dict] = []
        for index, sample in enumerate(reader):
            if index % every != keep:
                continue
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def captions(self, limit: int) -> list[str]:
        """The first `limit` captions of lane 0's first epoch (what the tokenizer learns from)."""
        samples = itertools.islice(self._samples(0, DataState()), limit)
        return [sample["txt"].decode("utf-8", "replace") for sample in samples if "txt" in sample]

    def _decode(self, sample: dict, lane: int, state: DataState, position: int):
        try:
            data = next(sample[k] for k in IMAGE_KEYS if k in sample)
            caption = sample["txt"].decode("utf-8")
            image = Image.open(io.BytesIO(data))
            # A JPEG decodes at 1/2, 1/4 or 1/8 scale for a fraction of the cost, as long as
            # the smallest crop still has `image_size` pixels a side.
            image.draft(None, (math.ceil(self.image_size / CROP_SCALE[0] ** 0.5),) * 2)
            rng = random.Random(_seed(self.seed, "crop", state.epoch, self.rank, lane, position))
            return random_resized_crop(image, self.image_size, rng), caption
        except Exception as exc:  # a corrupt sample costs itself, never the run
            state.skipped += 1
            _log_limited(state.skipped, "skipped sample %s (%d so far): %r",
                         sample.get("__key__"), state.skipped, exc)  # fmt: skip
            return None

    def lane_batches(self, lane: int) -> Iterator[tuple]:
        """One lane's batches (images, captions or tokens, lane, the lane's position after)."""
        state = DataState(**asdict(self.lanes[lane]))
        images, captions, empty_epochs = [], [], 0
        while True:
            start, decoded_any = state.consumed, False
            counted, replaying = state.read_errors, start > 0
            for position, sample in enumerate(self._samples(lane, state)):
                if position < start:  # replaying a resumed position: no decoding
                    if position == start - 1:  # where the checkpoint's count was taken: the
                        state.read_errors, replaying = counted, False  # replay's are in it
                    continue
                decoded = self._decode(sample, lane, state, position)
                state.consumed = position + 1
                if decoded is not None:
                    images.append(decoded[0])
                    captions.append(decoded[1])
                    decoded_any = True
                if len(images) == self.batch_size:
                    # Tokenized here, in the worker: at GPU batch sizes it costs milliseconds.
                    texts = self.tokenizer(captions) if self.tokenizer else captions
                    yield torch.stack(images), texts, lane, DataState(**asdict(state))
                    images, captions = [], []
            if replaying:  # the epoch ended short of the resumed position
                state.read_errors = counted
            empty_epochs = 0 if decoded_any or start else empty_epochs + 1
            if empty_epochs > len(self.shards):  # every epoch draws other shards: none reads
                raise RuntimeError(f"lane {lane} of rank {self.rank} reads no sample")
            state = DataState(state.epoch + 1, 0, state.skipped, state.read_errors)

    def __iter__(self) -> Iterator[tuple]:
        """In a DataLoader worker: the lane that worker serves (rotated to resume in turn)."""
        info = get_worker_info()
        physical = info.id if info else 0
        yield from self.lane_batches((physical + self.served) % len(self.lanes))

    def batches(self, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, Texts]]:
        """(images (B,3,S,S), captions, or (B,T) tokens with a tokenizer) in order; each lane's
        position advances as its batch is handed out."""
        if self.workers:
            # Forked workers tokenize in parallel already; tokenizers' own threads would warn.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            source = DataLoader(self, batch_size=None, num_workers=self.workers, prefetch_factor=4,
                                pin_memory=pin_memory)  # fmt: skip
        else:
            source = prefetch(self.lane_batches(0))
        for images, captions, lane, state in source:
            self.lanes[lane] = state
            self.served += 1
            yield images, captions


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
