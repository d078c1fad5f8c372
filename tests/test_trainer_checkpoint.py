"""Checkpoints load without unpickling code, and a resumed run trusts its checkpoint."""

from __future__ import annotations

import logging
import pickle
import shutil

import pytest
import torch
from trainer_helpers import MICRO, write_shards

import recipe
from filters.score import Scorer
from trainer import checkpoint, resume
from trainer.__main__ import main
from trainer.export import export
from trainer.model import CONFIGS
from trainer.train import TrainConfig, train


@pytest.fixture(autouse=True)
def micro_model(monkeypatch):
    monkeypatch.setitem(CONFIGS, "micro", MICRO)


class OpensAFile:
    """Unpickling this runs `open(marker, "w")`: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def flags(shards: str, output, *extra: str) -> list[str]:
    return ["train", "--shards", shards, "--output", str(output), "--batch-size", "8",
            "--shuffle-buffer", "8", "--checkpoint-every", "2", "--warmup", "1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of the MICRO model stopped after 2 of 4 steps."""
    tmp = tmp_path_factory.mktemp("ckpt")
    shards = write_shards(tmp / "shards", shards=1, per_shard=24)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(CONFIGS, "micro", MICRO)
        main(flags(shards, tmp / "run", "--model", "micro", "--vocab-size", "300", "--steps", "4",
                   "--stop-after", "2"))  # fmt: skip
    return shards, tmp / "run"


def test_training_state_loads_with_weights_only(trained):
    payload = torch.load(trained[1] / "checkpoints" / "latest.pt", weights_only=True)
    assert payload["step"] == 2 and isinstance(payload["rng"][0]["numpy"]["keys"], torch.Tensor)
    assert payload["data"][0]["lanes"][0]["consumed"] == 16


def test_a_checkpoint_that_would_run_code_is_refused_by_every_loader(trained, tmp_path):
    shards, run = trained
    marker = tmp_path / "marker"
    payload = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    hostile = tmp_path / "hostile" / "checkpoints" / "latest.pt"
    checkpoint.save(hostile, {**payload, "extra": OpensAFile(marker)})
    out = hostile.parent.parent
    loaders = {
        "load": lambda: checkpoint.load(hostile),
        "load_model": lambda: checkpoint.load_model(hostile),
        "score filter": lambda: Scorer(str(hostile)),
        "recipe": lambda: recipe.trained_steps(out),
        "resume (CLI)": lambda: resume.inherit({"output": str(out), "resume": "latest"}),
        "resume (train)": lambda: train(TrainConfig(shards=shards, output=str(out),
                                                    model="micro", resume=str(hostile))),
        "export": lambda: export(hostile, "hf", tmp_path / "hf"),
    }  # fmt: skip
    for name, load in loaders.items():
        with pytest.raises(ValueError, match="refusing to load"):
            load()
        assert not marker.exists(), name
    # The object is live: unpickled, it runs.
    pickle.loads(pickle.dumps(OpensAFile(marker)))
    assert marker.exists()


@pytest.mark.parametrize(
    "changed, saved, given",
    [(["--model", "tiny"], "'micro'", "'tiny'"), (["--vocab-size", "200"], "300", "200")],
)
def test_resume_refuses_a_changed_model_or_vocabulary(trained, tmp_path, capsys, changed, saved,
                                                      given):  # fmt: skip
    shards, run = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    with pytest.raises(SystemExit):
        main(flags(shards, out, "--resume", "latest", *changed))
    message = capsys.readouterr().err
    assert changed[0] in message and saved in message and given in message
    assert checkpoint.read_step(out / "checkpoints" / "latest.pt") == 2  # nothing ran


def test_resume_takes_the_checkpoints_settings_and_accepts_more_steps(trained, tmp_path, caplog):
    shards, run = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    with caplog.at_level(logging.WARNING, logger="trainer.resume"):
        main(flags(shards, out, "--resume", "latest", "--steps", "5"))  # no --model: micro
    assert "--steps changed from 4 to 5" in caplog.text
    payload = checkpoint.load(out / "checkpoints" / "latest.pt")
    assert payload["step"] == 5 and payload["train"]["model"] == "micro"
    assert payload["train"]["vocab_size"] == 300 and payload["train"]["stop_after"] is None
