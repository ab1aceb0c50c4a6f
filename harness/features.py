"""Run the frozen encoder once over a dataset and keep the taps a head needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from encoders.base import FrozenEncoder

from .progress import progress


@dataclass
class Features:
    """Encoded split: taps (N, ...) on the CPU (fp16 by default), targets, optional masks."""

    taps: dict[str, torch.Tensor]
    target: torch.Tensor
    valid: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.target)

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                        torch.Tensor | None]:
        feats = {k: v[idx].to(device, non_blocking=True) for k, v in self.taps.items()}
        valid = self.valid[idx].to(device) if self.valid is not None else None
        return feats, self.target[idx].to(device), valid


def _collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def loader(dataset: Dataset, batch_size: int, device: torch.device, shuffle: bool = False,
           num_workers: int = 0, generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=_collate, pin_memory=device.type == "cuda", drop_last=False,
                      generator=generator, persistent_workers=False)


def encode(encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], device: torch.device,
           batch_size: int = 64, num_workers: int = 0, dtype: torch.dtype = torch.float16,
           desc: str = "encode") -> Features:
    """Encode every sample of ``dataset`` (no sample dropped) and stack the taps on the CPU."""
    encoder.to(device)
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
    targets: list[torch.Tensor] = []
    valids: list[torch.Tensor] = []
    dl = loader(dataset, batch_size, device, num_workers=num_workers)
    for batch in progress(dl, desc=desc, total=len(dl)):
        images = batch["image"].to(device, non_blocking=True)
        out = encoder(images, taps)
        for t in taps:
            chunks[t].append(out[t].to("cpu", dtype))
        targets.append(batch["target"])
        if "valid" in batch:
            valids.append(batch["valid"])
    return Features(
        taps={t: torch.cat(v) for t, v in chunks.items()},
        target=torch.cat(targets),
        valid=torch.cat(valids) if valids else None,
    )
