"""A compact 2-D U-Net for lung lesion segmentation (ground-glass opacity, consolidation).

MONAI's residual :class:`monai.networks.nets.UNet` with strided-convolution downsampling and
batch normalisation (folded into the convolutions by ONNX Runtime): about 0.8 M parameters,
~8 ms per 224 x 224 slice with ONNX Runtime on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets.unet import UNet
from torch import nn


@dataclass(frozen=True, slots=True)
class LesionNetConfig:
    """Architecture hyper-parameters (recorded in the manifest's training config)."""

    in_channels: int = 1
    num_classes: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2 or len(self.channels) < 2:
            raise ValueError(f"invalid LesionNetConfig: {self}")


def build_lesion_net(cfg: LesionNetConfig) -> nn.Module:
    """The U-Net that maps ``(N, C, H, W)`` windowed slices to ``(N, K, H, W)`` logits.

    ``H`` and ``W`` must be multiples of ``2 ** (len(channels) - 1)``.
    """
    return UNet(
        spatial_dims=2,
        in_channels=cfg.in_channels,
        out_channels=cfg.num_classes,
        channels=cfg.channels,
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=cfg.num_res_units,
        norm="batch",
        dropout=cfg.dropout,
    )


class SoftmaxHead(nn.Module):
    """Wraps a logits network so that the exported graph outputs class probabilities.

    Parameters
    ----------
    net
        The logits network.
    background_bias
        Subtracted from the background logit before the softmax: a calibration of the
        lesion/background decision chosen on validation data after training (0: plain
        softmax). It is part of the exported graph, so every runtime applies it.
    """

    def __init__(self, net: nn.Module, background_bias: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.background_bias = float(background_bias)
        n_classes = int(getattr(net, "out_channels", 0))
        if self.background_bias and n_classes < 1:
            raise ValueError("a background bias needs a network with an out_channels attribute")
        # A constant (1, K, 1, 1) tensor: the exported graph is one Sub before the Softmax
        # (no shape arithmetic), which every runtime and the FP16 converter handle.
        shift = torch.zeros(1, max(n_classes, 1), 1, 1)
        shift[0, 0] = self.background_bias
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if self.background_bias:
            logits = logits - self.shift
        return torch.softmax(logits, dim=1)
