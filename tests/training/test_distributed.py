"""DistributedDataParallel on CPU with the gloo backend: two real processes, disjoint data shards,
identical weights, the bundle written by rank 0, and the accuracy of a single-process run."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from tests.tiny import CNN

import clarivis
from clarivis.data.loaders import epoch_order

SETTINGS = dict(model=CNN, img_size=32, epochs=6, batch_size=16, lr=3e-3, patience=None,
                val_fraction=0.0, hflip=False)


@pytest.mark.parametrize("balanced", [False, True])
def test_ranks_get_disjoint_equal_shards_that_cover_the_epoch(balanced):
    targets = [i % 3 for i in range(101)]
    shards = [epoch_order(targets, seed=0, epoch=4, balanced=balanced, num_classes=3, rank=r, world=2)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50  # equal: every rank takes as many steps
    if not balanced:  # balanced draws with replacement; unbalanced is a true partition
        assert not set(shards[0]) & set(shards[1])
        assert len(set(shards[0]) | set(shards[1])) == 100
    again = epoch_order(targets, seed=0, epoch=4, balanced=balanced, num_classes=3, rank=0, world=2)
    assert again == shards[0]  # (seed, epoch) decide the order: resume-exact


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, data: str, out: str, record_dir: str) -> None:
    """One DDP rank: records the sample indices it trained on and its final weights."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from clarivis.training import engine, loop

    seen: list[int] = []
    original_order, original_epoch = loop.epoch_order, engine.train_one_epoch

    def recording_order(*args, **kwargs):
        order = original_order(*args, **kwargs)
        if kwargs.get("epoch") == 2:
            seen.extend(order)
        return order

    def recording_epoch(model, *args, **kwargs):
        stats = original_epoch(model, *args, **kwargs)
        weights = {k: v.detach().clone() for k, v in engine.unwrap(model).state_dict().items()}
        torch.save(weights, f"{record_dir}/rank{rank}.pt")
        return stats

    loop.epoch_order, engine.train_one_epoch = recording_order, recording_epoch
    clarivis.train(data, out=out, device="cpu", **SETTINGS)
    with open(f"{record_dir}/rank{rank}.json", "w") as f:
        json.dump(seen, f)


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tmp_path):
    from clarivis.data.builtin import make_digits

    data = make_digits(tmp_path / "digits", img_size=32)
    mp.spawn(_rank_main, args=(2, _free_port(), str(data / "train"), str(tmp_path / "ddp"),
                               str(tmp_path)), nprocs=2, join=True)

    shards = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert shards[0] and not set(shards[0]) & set(shards[1])  # disjoint halves of the epoch
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    bundle = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    for name, tensor in bundle.items():
        assert torch.equal(tensor, rank0[name]), name  # rank 0 wrote its own weights
        if "running" not in name and "num_batches" not in name:
            # Gradients are averaged, so weights stay identical. (BatchNorm running statistics
            # are per rank between DDP's broadcasts from rank 0: not compared.)
            assert torch.allclose(rank0[name].float(), rank1[name].float(), atol=1e-5), name
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == SETTINGS["epochs"]

    single = clarivis.train(data / "train", out=tmp_path / "single", device="cpu", **SETTINGS)
    acc_ddp = clarivis.Classifier.load(tmp_path / "ddp" / "model").evaluate(data / "test").accuracy
    acc_one = clarivis.Classifier.load(single.bundle_dir).evaluate(data / "test").accuracy
    assert acc_one > 0.5  # the comparison means something only if the task is learned
    assert abs(acc_ddp - acc_one) < 0.15, (acc_ddp, acc_one)
