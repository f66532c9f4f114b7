"""Box regression with ``l1 + 2*giou`` (DETR's box loss) or ``ciou``: find the rectangle in an image.

Each 16 x 16 image holds one bright rectangle on a noisy background. A small convolutional
network predicts its box as ``x1 y1 x2 y2`` in [0, 1] (a centre and a positive size, so every
predicted box is valid). The loss is written as text, with the L1 distance of the corners and
the generalized IoU loss side by side, and the monitor shows how much each contributes. The
example prints the mean IoU of held-out boxes before and after training.
Run ``python examples/detection_boxes.py --steps 400`` (or ``--loss "ciou + 0.5*l1"``).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import lossdsl

SIZE = 16
LOSS = "l1 + 2*giou"


def make_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (n, 1, 16, 16), boxes (n, 4))``: one rectangle each, corners in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    size = torch.rand(n, 2, generator=g) * 0.45 + 0.15
    corner = torch.rand(n, 2, generator=g) * (1 - size)
    boxes = torch.cat([corner, corner + size], 1)
    centres = (torch.arange(SIZE) + 0.5) / SIZE
    inside_x = (centres >= boxes[:, 0:1]) & (centres <= boxes[:, 2:3])  # (n, 16) along x
    inside_y = (centres >= boxes[:, 1:2]) & (centres <= boxes[:, 3:4])
    images = (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]
    return images + 0.3 * torch.randn(images.shape, generator=g), boxes


class BoxNet(nn.Module):
    """Image -> box: centre in (0, 1) by a sigmoid, half-size > 0 by a softplus."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * (SIZE // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        centre = torch.sigmoid(out[:, :2])
        half = 0.5 * nn.functional.softplus(out[:, 2:])
        return torch.cat([centre - half, centre + half], 1)


@torch.no_grad()
def mean_iou(pred: torch.Tensor, boxes: torch.Tensor) -> float:
    w = (torch.minimum(pred[:, 2], boxes[:, 2]) - torch.maximum(pred[:, 0], boxes[:, 0])).clamp_min(0)
    h = (torch.minimum(pred[:, 3], boxes[:, 3]) - torch.maximum(pred[:, 1], boxes[:, 1])).clamp_min(0)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    inter = w * h
    return float((inter / (area(pred) + area(boxes) - inter)).mean())


def main(steps: int = 400, loss: str = LOSS, seed: int = 0) -> list[float]:
    """Train the box regressor; returns the loss of every step."""
    torch.manual_seed(seed)
    crit = lossdsl.compile(loss)
    images, boxes = make_images(4096, seed)
    test_images, test_boxes = make_images(512, seed + 1)
    model = BoxNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    before = mean_iou(model(test_images), test_boxes)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, len(images), (64,))
        total = crit(model(images[idx]), boxes[idx])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    after = mean_iou(model(test_images), test_boxes)
    print(f"{loss}: mean IoU on held-out images {before:.2f} -> {after:.2f}")
    print(crit.monitor.summary())
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--loss", default=LOSS)
    args = parser.parse_args()
    main(args.steps, args.loss)
