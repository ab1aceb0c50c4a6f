"""A tiny image-classification task for protocol tests: label = brightest colour channel."""

from __future__ import annotations

import torch

from tasks.datasets.base import TaskDataset
from tasks.spec import DataRequest, SplitSpec, TaskSpec, TransformSpec

ACCESS_LOG: list[tuple[str, int]] = []


class ToyDataset(TaskDataset):
    def __init__(self, split: str, n: int, size: int = 32, aug_copy: int | None = None, log: bool = False):
        g = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.base = torch.rand(n, 3, size, size, generator=g) * 0.5
        self.split, self.aug_copy, self.log = split, aug_copy, log

    def __len__(self) -> int:
        return len(self.labels)

    def class_labels(self):
        return self.labels.numpy()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.log:
            ACCESS_LOG.append((self.split, i))
        img = self.base[i].clone()
        img[self.labels[i]] += 0.4
        if self.aug_copy is not None:  # a deterministic "augmentation" per copy: flip on odd copies
            g = torch.Generator().manual_seed(1000 * self.aug_copy + i)
            if torch.rand(1, generator=g).item() < 0.5:
                img = img.flip(-1)
        return {"image": img, "target": self.labels[i]}


def toy_task(name: str = "toy", n_train: int = 96, random_aug: bool = False, aug_copies: int = 1,
             log: bool = False, fail: bool = False, epochs: int = 3, val_official: bool = True) -> TaskSpec:
    def build(task: TaskSpec, req: DataRequest) -> ToyDataset:
        if fail:
            raise RuntimeError("toy dataset exploded")
        n = {"train": n_train, "val": 48, "test": 40}[req.split]
        if req.limit and req.split == "train":
            n = min(n, req.limit)
        copy = req.aug_copy if (req.train and random_aug) else None
        return ToyDataset(req.split, n, aug_copy=copy, log=log)

    return TaskSpec(
        name=name, paper_name="toy", output="image", nature="semantic", head="linear", loss="ce", metric="top1",
        dataset=build, num_outputs=3, epochs=epochs, batch_size=16, suite="test",
        splits=SplitSpec("train", "val" if val_official else None, "test", val_fraction=0.25),
        train_transform=TransformSpec(hflip=random_aug), aug_copies=aug_copies,
    )
