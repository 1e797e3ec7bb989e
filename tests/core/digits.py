"""Small digits models and data for the core end-to-end test (``tests/core/test_end_to_end.py``).

Plain PyTorch + scikit-learn only (no Lightning, no Hydra), so that the fastsnn core can be
checked end to end in seconds on a CPU: scikit-learn's bundled 8x8 digits, upsampled to
16x16, a fixed stratified train/val/test split, two small converter-friendly CNNs (a plain
one and a residual one: conv + BN + ReLU, stride-2 convolutions, a residual add, average
pooling, a linear output layer), and a short SGD training recipe.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fastsnn
from fastsnn.backbones.layers import conv_bn_relu
from fastsnn.backbones.resnet import BasicBlock

# --------------------------------------------------------------------------- data


def digits_splits(
    image_size: int = 16, test_fraction: float = 0.25, val_fraction: float = 0.15, split_seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train"|"val"|"test": (images [N, 1, S, S] float32, labels [N] int64)}``.

    Fixed stratified split (``split_seed`` only); pixels scaled to [0, 1], upsampled once
    (bilinear) to ``image_size`` and normalised with the training split's mean / std.
    The fractions refer to the whole data set (1797 images).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = np.asarray(digits.target, dtype=np.int64)
    idx = np.arange(len(y))
    trainval, test = train_test_split(idx, test_size=round(test_fraction * len(y)), stratify=y, random_state=split_seed)
    train, val = train_test_split(
        trainval, test_size=round(val_fraction * len(y)), stratify=y[trainval], random_state=split_seed
    )
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    labels = torch.from_numpy(y)
    return {
        name: (x[np.sort(i)].contiguous(), labels[np.sort(i)].contiguous())
        for name, i in (("train", train), ("val", val), ("test", test))
    }


def loader(
    split: tuple[torch.Tensor, torch.Tensor], batch_size: int = 64, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """A DataLoader over one split; shuffling is seeded so that runs repeat exactly."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(*split), batch_size=batch_size, shuffle=shuffle, generator=generator)


# --------------------------------------------------------------------------- models


class PlainCNN(nn.Module):
    """16x16 -> conv -> stride-2 conv -> conv -> stride-2 conv -> global avg pool -> linear."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn_relu(1, w),
            conv_bn_relu(w, 2 * w, stride=2),
            conv_bn_relu(2 * w, 2 * w),
            conv_bn_relu(2 * w, 4 * w, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class ResidualCNN(nn.Module):
    """16x16 -> conv -> stride-2 conv -> residual block -> stride-2 conv -> avg pool -> linear."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = conv_bn_relu(1, w)
        self.down1 = conv_bn_relu(w, 2 * w, stride=2)
        self.block = BasicBlock(2 * w, 2 * w)
        self.down2 = conv_bn_relu(2 * w, 4 * w, stride=2)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.down2(self.block(self.down1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


MODELS = {"plain": PlainCNN, "residual": ResidualCNN}


# --------------------------------------------------------------------------- training


def train(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """SGD with a cosine learning-rate schedule and cross-entropy; returns ``model`` in eval mode."""
    batches = loader(data, batch_size, shuffle=True, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * len(batches), 1))
    model.train()
    for _ in range(epochs):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int = 512) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    x, y = data
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(y), batch_size)
    )
    model.train(was_training)
    return 100.0 * correct / len(y)


def float_model(
    name: str, data: dict, epochs: int = 6, width: int = 16, alpha_init: float = 3.0, lr: float = 0.1, seed: int = 0
) -> nn.Module:
    """``MODELS[name]`` trained at full precision on ``data["train"]``, its ReLUs already
    replaced by clipped ReLUs with a learnable clip ``alpha`` (``QuantReLU(bits=None)``), so
    that the clip values are trained before quantization (docs/method.md §2)."""
    torch.manual_seed(seed)
    model = fastsnn.quantize_model(MODELS[name](width), None, alpha_init=alpha_init)
    return train(model, data["train"], epochs, lr=lr, seed=seed) if epochs else model.eval()


def quantize_and_train(
    model: nn.Module, bits: int, data: dict, epochs: int = 6, lr: float = 0.04, seed: int = 0
) -> nn.Module:
    """Quantize ``model``'s activations to ``bits`` bits in place (clips keep their values;
    weights stay full precision) and train it on ``data["train"]``."""
    fastsnn.quantize_model(model, bits)
    return train(model, data["train"], epochs, lr=lr, seed=seed + bits)


def quantized_model(
    name: str, data: dict, bits: int = 2, fp_epochs: int = 6, q_epochs: int = 6, seed: int = 0, **kwargs
) -> nn.Module:
    """The recipe of the end-to-end test: ``fp_epochs`` at full precision
    (clipped ReLUs), then ``q_epochs`` at ``bits`` bits. About 3 s for 6 + 6 epochs on a CPU."""
    model = float_model(name, data, fp_epochs, seed=seed, **kwargs)
    return quantize_and_train(model, bits, data, q_epochs, seed=seed)
