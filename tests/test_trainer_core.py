"""The trainer on tiny generated shards: it learns (past corrupt samples) and resumes exactly."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch
from trainer_helpers import write_class_folder, write_shards

from trainer import checkpoint
from trainer.evaluate import load_folder, zero_shot
from trainer.model import CONFIGS
from trainer.train import TrainConfig, train

MICRO = dataclasses.replace(
    CONFIGS["tiny"], embed_dim=64, image_size=32, vision_width=64, vision_layers=2,
    text_width=64, text_layers=2, context_length=16,
)  # fmt: skip


@pytest.fixture(autouse=True)
def micro_model(monkeypatch):
    monkeypatch.setitem(CONFIGS, "micro", MICRO)
    torch.set_num_threads(2)


def config(tmp_path, shards, **overrides) -> TrainConfig:
    base = dict(shards=shards, output=str(tmp_path / "run"), model="micro", batch_size=16,
                steps=8, lr=2e-3, warmup=2, vocab_size=300, shuffle_buffer=32,
                checkpoint_every=4)  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_loss_falls_and_zero_shot_beats_chance(tmp_path):
    shards = write_shards(tmp_path / "shards", shards=2, per_shard=96, corrupt=2)
    folder = write_class_folder(tmp_path / "eval")
    result = train(config(tmp_path, shards, steps=60, warmup=5, eval_folder=str(folder)))
    assert result["skipped_samples"] >= 2  # the corrupt JPEGs, once per epoch read
    first, last = sum(result["losses"][:5]) / 5, sum(result["losses"][-5:]) / 5
    # Each batch repeats each of the four captions ~4 times, so the loss floor is about ln 4.
    assert last < 0.75 * first and last < 1.7
    assert result["metrics"]["zeroshot_top1"] >= 0.6  # chance is 0.25 over four classes
    assert (tmp_path / "run" / "metrics.csv").exists() and (
        tmp_path / "run" / "curves.png"
    ).exists()
    model, tokenizer, _ = checkpoint.load_model(tmp_path / "run" / "checkpoints" / "latest.pt")
    images, labels, classes = load_folder(folder)
    assert zero_shot(model, tokenizer, images, labels, classes)["top1"] == pytest.approx(
        result["metrics"]["zeroshot_top1"]
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"loss": "siglip", "workers": 2, "accumulate": 2}],
    ids=["clip-thread", "siglip-workers-accumulate"],
)
def test_resume_gives_the_same_losses(tmp_path, options):
    shards = write_shards(tmp_path / "shards", shards=3, per_shard=40)
    whole = train(config(tmp_path / "a", shards, steps=10, **options))["losses"]
    first = train(config(tmp_path / "b", shards, steps=10, stop_after=4, **options))["losses"]
    rest = train(config(tmp_path / "b", shards, steps=10, resume="latest", **options))["losses"]
    assert first == pytest.approx(whole[:4], abs=1e-6)
    assert rest == pytest.approx(whole[4:], rel=1e-4, abs=1e-5)
    assert len(set(whole)) == len(whole)  # the batches differ: the check compares something
    with (tmp_path / "b" / "run" / "metrics.csv").open() as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, 11))
