"""Fine-tuning as a timm + torchvision tutorial writes it: the yardstick of finetune_vs_tutorial.py.

ImageNet weights from a local file (all but the classifier), ImageFolder, RandomResizedCrop
(scale 0.35-1) + flip, AdamW lr 1e-3 with a one-cycle schedule over all steps, label smoothing
0.1, then top-1 accuracy on the test folder (Resize to S/0.875 + CenterCrop S, as timm evaluates).
Nothing here is tuned to a dataset; only what the benchmark needs (seed, result JSON) was added.

    python benchmarks/tutorial_finetune.py TRAIN_DIR TEST_DIR --model efficientnet_lite0 \
        --weights efficientnet_lite0.in1k.safetensors --img-size 96 --epochs 3 --json out.json
"""

import argparse
import json
import time

import timm
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_dir")
    p.add_argument("test_dir")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", required=True, help=".safetensors or .pt state dict (ImageNet)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args()
    start, size, device = time.perf_counter(), args.img_size, args.device
    torch.manual_seed(args.seed)

    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.35, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    test_tf = transforms.Compose([
        transforms.Resize(int(size / 0.875)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    train_set = datasets.ImageFolder(args.train_dir, transform=train_tf)
    test_set = datasets.ImageFolder(args.test_dir, transform=test_tf)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              num_workers=args.workers, drop_last=len(train_set) % args.batch_size == 1)
    test_loader = DataLoader(test_set, batch_size=args.batch_size, num_workers=args.workers)

    model = timm.create_model(args.model, num_classes=len(train_set.classes))
    state = load_file(args.weights) if args.weights.endswith(".safetensors") else torch.load(
        args.weights, map_location="cpu")
    head = model.default_cfg.get("classifier", "classifier")  # e.g. 'classifier', 'fc', 'head'
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert all(k.startswith(head + ".") for k in missing) and not unexpected, (missing, unexpected)
    model.to(device)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                    total_steps=args.epochs * len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(args.epochs):
        model.train()
        total_loss, seen, epoch_start = 0.0, 0, time.perf_counter()
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * labels.size(0)
            seen += labels.size(0)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total_loss / seen:.4f} "
              f"({time.perf_counter() - epoch_start:.1f}s)", flush=True)
    train_seconds = time.perf_counter() - start

    model.eval()
    correct, seen = 0, 0
    with torch.no_grad():
        for images, labels in test_loader:
            outputs = model(images.to(device))
            correct += (outputs.argmax(1).cpu() == labels).sum().item()
            seen += labels.size(0)
    print(f"test accuracy {correct / seen:.4f} ({seen} images)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"test_accuracy": correct / seen, "test_images": seen,
                       "train_images": len(train_set), "train_seconds": round(train_seconds, 2),
                       "seconds_in_script": round(time.perf_counter() - start, 2),
                       "steps": args.epochs * len(train_loader), "batch_size": args.batch_size,
                       "torch_threads": torch.get_num_threads()}, f)


if __name__ == "__main__":
    main()
