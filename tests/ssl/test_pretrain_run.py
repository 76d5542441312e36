"""clarivis.pretrain end to end on generated images: the run folder, a backbone that
`clarivis.train(..., weights=)` loads unchanged (CNN and ViT), unlabeled layouts, corrupt files,
resume, the time limit and the errors a user can cause."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from tests.tiny import CNN, VIT, write_image

import clarivis
from clarivis.errors import ConfigError, DataError, ResumeError
from clarivis.ssl import run as ssl_run
from clarivis.ssl.backbone import create_backbone
from clarivis.ssl.config import PretrainConfig
from clarivis.ssl.data import index_unlabeled
from clarivis.training import loop

FAST = dict(epochs=1, batch_size=8, img_size=32, workers=0, device="cpu")
COLORS = [(220, 20, 20), (20, 20, 220), (20, 200, 20), (220, 220, 20)]


@pytest.fixture
def flat_folder(tmp_path):
    """16 images straight in one folder (no class subfolders) and one corrupt file."""
    root = tmp_path / "unlabeled"
    for i in range(16):
        write_image(root / f"img{i:02d}.png", COLORS[i % 4], size=(32, 32))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


@pytest.mark.parametrize("model", [CNN, VIT])
def test_backbone_is_what_train_weights_loads(model, flat_folder, tiny_folder, tmp_path, monkeypatch):
    result = clarivis.pretrain(flat_folder, out=tmp_path / "ssl", model=model, **FAST)
    run = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "last.ckpt", "backbone.safetensors",
                 "backbone.json", "skipped_files.txt"):
        assert (run / name).exists(), name
    assert "broken.jpg" in (run / "skipped_files.txt").read_text()
    assert [p for p, _ in result.skipped] == [str(flat_folder / "broken.jpg")]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and torch.isfinite(torch.tensor(record["train_loss"]))
    assert 0 < record["embedding_std"] <= 1
    saved = load_file(str(result.backbone_path))
    expected = timm.create_model(model, num_classes=0, **({"img_size": 32} if model == VIT else {}))
    assert set(saved) == set(expected.state_dict())  # timm's names, no head
    assert f"--model {model} --img-size 32 --weights" in result.next_command
    loaded = _weights_train_starts_from(monkeypatch, tiny_folder, model, result.backbone_path,
                                        tmp_path / "fine")
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)


def _weights_train_starts_from(monkeypatch, data, model, weights, out) -> dict:
    """The model clarivis.train builds from --weights, before its first step."""
    created = {}

    def spy(*args, **kwargs):
        net = create_model(*args, **kwargs)
        created.update({k: v.detach().clone() for k, v in net.state_dict().items()})
        return net

    create_model = loop.create_model
    monkeypatch.setattr(loop, "create_model", spy)
    clarivis.train(data, out=out, model=model, img_size=32, weights=str(weights), epochs=1,
                   batch_size=8, workers=0, report=False, device="cpu")
    return created


def test_unlabeled_layouts(tmp_path):
    tree = tmp_path / "tree"  # train/val/test class folders: test/ stays out of pretraining
    for split in ("train", "val", "test"):
        write_image(tree / split / "cat" / f"{split}.png")
    (tree / ".hidden").mkdir()
    write_image(tree / ".hidden" / "x.png")
    assert sorted(s.path.split("/")[-1] for s in index_unlabeled(tree)) == ["train.png", "val.png"]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,split\ntree/train/cat/train.png,train\ntree/test/cat/test.png,test\n")
    assert [s.path for s in index_unlabeled(manifest)] == [str(tmp_path / "tree/train/cat/train.png")]
    with pytest.raises(DataError, match="'path' column"):
        (tmp_path / "bad.csv").write_text("file,label\na.png,x\n")
        index_unlabeled(tmp_path / "bad.csv")


def test_resume_continues_from_the_checkpoint(flat_folder, tmp_path, monkeypatch):
    settings = {**FAST, "model": CNN, "method": "byol", "epochs": 2}
    full = clarivis.pretrain(flat_folder, out=tmp_path / "full", **settings)
    with monkeypatch.context() as patch:  # interrupted right after epoch 1's checkpoint
        save = ssl_run.save_checkpoint

        def save_then_stop(path, state):
            save(path, state)
            raise KeyboardInterrupt

        patch.setattr(ssl_run, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            clarivis.pretrain(flat_folder, out=tmp_path / "part", **settings)
    resumed = clarivis.pretrain(flat_folder, resume=tmp_path / "part")
    assert resumed.epochs_run == 2 and [h["epoch"] for h in resumed.history] == [1, 2]
    losses = [h["train_loss"] for h in resumed.history]
    assert losses == pytest.approx([h["train_loss"] for h in full.history], rel=1e-4)
    a, b = load_file(str(full.backbone_path)), load_file(str(resumed.backbone_path))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    with pytest.raises(ResumeError, match="already finished"):
        clarivis.pretrain(flat_folder, resume=tmp_path / "part")
    # A new run may start from these weights (--weights): the backbone starts as saved.
    config = PretrainConfig(data=str(flat_folder), model=CNN, img_size=32, weights=str(full.backbone_path))
    start = create_backbone(config).state_dict()
    assert all(torch.equal(start[k], v) for k, v in a.items())


def test_time_limit_stops_and_still_writes_the_backbone(flat_folder, tmp_path, monkeypatch):
    clock = iter(range(0, 100_000, 5))  # every reading of the clock is 5 s later
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    result = clarivis.pretrain(flat_folder, out=tmp_path / "run", model=CNN,
                               **{**FAST, "epochs": 50, "time_limit": 1.0})
    assert result.stopped_early and result.epochs_run < 50
    assert result.backbone_path.is_file()
    assert torch.load(result.run_dir / "last.ckpt", weights_only=True)["finished"]


def test_user_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        clarivis.pretrain(tmp_path / "missing", out=tmp_path / "a", **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        clarivis.pretrain(tmp_path / "empty", out=tmp_path / "b", **FAST)
    assert not (tmp_path / "b").exists()  # no empty run folder left behind
    with pytest.raises(ConfigError, match="unknown method 'moco'"):
        clarivis.pretrain(tmp_path / "empty", method="moco")
    with pytest.raises(ConfigError, match="unknown setting"):
        clarivis.pretrain(tmp_path / "empty", label_smoothing=0.1)


def test_resume_refuses_the_other_kind_of_run(flat_folder, tiny_folder, tmp_path):
    # The kind is checked before "finished": the message names the right command either way.
    pretrained = clarivis.pretrain(flat_folder, out=tmp_path / "ssl", **FAST)
    with pytest.raises(ResumeError, match="is a pretraining run; continue it with clarivis pretrain"):
        clarivis.train(tiny_folder, resume=pretrained.run_dir, **FAST)
    trained = clarivis.train(tiny_folder, out=tmp_path / "sup", model=CNN, report=False, **FAST)
    with pytest.raises(ResumeError, match="is a training run, not a pretraining run"):
        clarivis.pretrain(flat_folder, resume=trained.run_dir, **FAST)
