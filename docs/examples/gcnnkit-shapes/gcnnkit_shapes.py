"""gcnnkit-shapes: discs, rings and crosses at random angles, drawn when read."""

import torch

from gcnnkit.run.data import SourceSplits, StreamedSplit


class ShapeImages:
    """Image i is shape i % 3, turned and sized at random from (seed, i): an ImageStore."""

    def __init__(self, count: int, seed: int, size: int):
        self.count, self.seed, self.size = count, seed, size

    def __len__(self) -> int:
        return self.count

    def read(self, i: int) -> torch.Tensor:  # [1, size, size] float in [0, 1]
        turn, scale = torch.rand(2, generator=torch.Generator().manual_seed(self.seed * 100_003 + i))
        y, x = torch.meshgrid(*[torch.linspace(-1, 1, self.size)] * 2, indexing="ij")
        c, s = (2 * torch.pi * turn).cos(), (2 * torch.pi * turn).sin()
        u, v, r = c * x + s * y, c * y - s * x, x.hypot(y)
        shape = [r < 0.3 + 0.3 * scale, (r - 0.4 - 0.2 * scale).abs() < 0.12, (u.abs() < 0.15) | (v.abs() < 0.15)]
        return (shape[i % 3] & (r < 0.85)).float()[None]

    def name(self, i: int) -> str:
        return f"shapes seed {self.seed} image {i}"


class Shapes:
    api_version = 1  # the data-set plugin API this is written for
    classes = ["disc", "ring", "cross"]
    channels = 1
    image_size = 29

    def load(self, settings) -> SourceSplits:
        def split(count: int, seed: int) -> StreamedSplit:
            store = ShapeImages(count, seed, settings.image_size or self.image_size)
            return StreamedSplit(store, torch.arange(count) % 3, num_workers=settings.num_workers)

        return SourceSplits(split(3000, 1), split(600, 2), classes=self.classes, source="gcnnkit-shapes")
