"""Shared encoders for hard-parameter-sharing (HPS) models, built from torchvision architectures.

Every backbone maps an image batch (already normalized) to a :class:`BackboneOutput`:

* ``pooled`` ``[B, D]``: the shared representation ``z`` (global-average-pooled last feature map, or
  the class token for ViT).  Classification heads and MTL-UE's intra-class std metric (Table 1) use it.
* ``maps``: feature maps ``[low, high]`` (low = stride 4, high = last stage), used by dense decoders.

Adaptation to small inputs (MTL-UE Sec. 5.1 lists ResNet-18/50, VGG-16, DenseNet-121, ViT-B):

* ResNet-18/50/101/152 and WRN-50-2 (``wide_resnet50_2``; MTL-UE Table 13 lists ResNet-101/152 and
  WideResNet-50 as victim backbones) share one class; all keep the standard 7x7/2 + maxpool stem by default (``stem="imagenet"``).  Cost of a 3-task
  ResNet-18 forward pass (torch.utils.flop_counter): 0.074 GFLOP/img at 32x32 and 0.296 at 64x64 with
  this stem, versus 1.111 and 4.443 GFLOP/img (15x) with a CIFAR-style 3x3/1 stem without maxpool.
  Measured training throughput on the shared 2-core CPU (heavily loaded by other jobs, load 7-15):
  64x64 ~54 img/s (2 threads) / ~13 img/s (1 thread, load 13), 32x32 ~25 img/s (1 thread, load 13);
  the 3x3/1 stem ran at 1-4 img/s at 64x64.  ``stem="cifar"`` remains available (GPUs, tiny images).
* VGG-11 / VGG-16 use the batch-norm variants (``vgg11_bn`` / ``vgg16_bn``) because victims train from scratch; its 4096-wide
  classifier is dropped (heads are linear on the pooled 512-d features).
* DenseNet-121 uses torchvision's ``features`` (+ ReLU), stem unchanged.
* MobileNetV3-small uses torchvision's ``features`` (stem unchanged); victims the surrogates never saw.
* ViT-B/16 is torchvision's ``VisionTransformer`` with ``image_size`` set to the input size and the
  patch size reduced for small images (``image_size // 8`` capped at 16, i.e. 8x8 patch tokens at <=128 px).

``small_cnn`` (4 conv layers, ~33 k parameters) is not a victim architecture of the papers: it exists for
fast tests and smoke runs on the CPU.

Pretrained weights are never downloaded: ``weights_path`` must point to a local state-dict file.

**Stages** (used by the MTL architectures beyond HPS in :mod:`mtlguard.models.mtl_archs`): every
convolutional backbone splits into four sequential blocks, :meth:`Backbone.stages`, that together compute
the same map as the backbone (views on its own modules, so state dicts are unchanged):

* ResNets / WRN: ``[stem + layer1, layer2, layer3, layer4]``;
* VGG: split after the 2nd, 3rd and 4th max-pool;  DenseNet-121: ``[stem, block1 + transition1,
  block2 + transition2, the rest]``;  MobileNetV3-small: after features 1, 3 and 8;
* ``small_cnn``: its four conv-BN-ReLU layers.

``low_stage`` is the index of the stage whose output is the stride-4 ``low`` map of dense heads.  ViT has
no stages (its tokens are not feature maps): MTAN / Cross-stitch / branched models need a CNN backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

ARCHS = ("resnet18", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "vgg11", "vgg16", "densenet121",
         "mobilenet_v3_small", "vit_b_16", "small_cnn")
_RESNETS = ("resnet18", "resnet50", "resnet101", "resnet152", "wide_resnet50_2")
_VGG_CFG = {"vgg11": "A", "vgg16": "D"}


@dataclass
class BackboneOutput:
    pooled: torch.Tensor
    maps: list[torch.Tensor]


class Backbone(nn.Module):
    """Base class: ``out_dim`` (pooled width), ``low_channels`` / ``high_channels`` (map widths)."""

    out_dim: int
    low_channels: int
    high_channels: int
    #: index (0-3) of the stage whose output is the stride-4 ``low`` map
    low_stage: int = 0

    def forward(self, x: torch.Tensor) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """Four blocks applied in sequence to the normalized image; their composition is the backbone's
        last feature map (``maps[-1]``) and output ``low_stage`` is ``maps[0]``."""
        raise ValueError(f"{type(self).__name__} has no convolutional stages: MTAN / Cross-stitch / branched "
                         "models need a CNN backbone (resnet*, wide_resnet50_2, vgg*, densenet121, "
                         "mobilenet_v3_small, small_cnn)")


def _load_local_weights(module: nn.Module, arch: str, weights_path: str | Path | None, pretrained: bool) -> None:
    if not pretrained:
        return
    if weights_path is None:
        raise ValueError(
            f"pretrained=True for arch {arch!r} needs weights_path= a local torchvision state-dict file: "
            "mtlguard never downloads weights"
        )
    p = Path(weights_path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file for {arch!r} not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    own = module.state_dict()
    # keep only tensors whose name and shape match (the adapted stem / patch embedding may differ)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"weights file {p} has no tensor matching arch {arch!r}")
    module.load_state_dict(usable, strict=False)


def _adapt_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)


class ResNetBackbone(Backbone):
    def __init__(self, arch: str, in_channels: int, stem: str, pretrained: bool, weights_path) -> None:
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        _load_local_weights(net, arch, weights_path, pretrained)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif stem == "imagenet":
            net.conv1 = _adapt_in_channels(net.conv1, in_channels)
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet' or 'cifar'")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_dim = self.high_channels = net.fc.in_features
        self.low_channels = 64 if arch in ("resnet18", "resnet34") else 256

    def forward(self, x):
        low = self.layer1(self.stem(x))
        high = self.layer4(self.layer3(self.layer2(low)))
        return BackboneOutput(high.mean((2, 3)), [low, high])

    def stages(self):
        return [nn.Sequential(self.stem, self.layer1), self.layer2, self.layer3, self.layer4]


class VGGBackbone(Backbone):
    def __init__(self, in_channels: int, pretrained: bool, weights_path, arch: str = "vgg16") -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        net = nn.Module()  # only `features` (keys match torchvision's vggXX_bn state dict); no 4096-wide classifier
        net.features = make_layers(cfgs[_VGG_CFG[arch]], batch_norm=True)
        for m in net.features.modules():  # torchvision's VGG init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        _load_local_weights(net, arch, weights_path, pretrained)
        feats = list(net.features)
        feats[0] = _adapt_in_channels(feats[0], in_channels)
        # split after the 2nd maxpool (stride 4): index 13 in vgg16_bn, 7 in vgg11_bn
        pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
        self.low = nn.Sequential(*feats[:pools[1] + 1])
        self.high = nn.Sequential(*feats[pools[1] + 1:])
        self.low_channels, self.high_channels, self.out_dim = 128, 512, 512

    def forward(self, x):
        low = self.low(x)
        high = self.high(low)
        return BackboneOutput(high.mean((2, 3)), [low, high])

    def stages(self):
        q = [i for i, m in enumerate(self.high) if isinstance(m, nn.MaxPool2d)]  # 3rd, 4th (and 5th) pools
        return [self.low, self.high[:q[0] + 1], self.high[q[0] + 1:q[1] + 1], self.high[q[1] + 1:]]


class DenseNetBackbone(Backbone):
    def __init__(self, in_channels: int, pretrained: bool, weights_path) -> None:
        super().__init__()
        net = torchvision.models.densenet121(weights=None)
        _load_local_weights(net, "densenet121", weights_path, pretrained)
        f = net.features
        f.conv0 = _adapt_in_channels(f.conv0, in_channels)
        self.low = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)  # stride 4, 64 ch
        self.high = nn.Sequential(f.denseblock1, f.transition1, f.denseblock2, f.transition2,
                                  f.denseblock3, f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=False))
        self.low_channels, self.high_channels, self.out_dim = 64, 1024, 1024

    def forward(self, x):
        low = self.low(x)
        high = self.high(low)
        return BackboneOutput(high.mean((2, 3)), [low, high])

    def stages(self):
        return [self.low, self.high[0:2], self.high[2:4], self.high[4:]]


class ViTBackbone(Backbone):
    def __init__(self, in_channels: int, image_size: int, patch_size: int | None, pretrained: bool, weights_path):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer

        if patch_size is None:
            patch_size = 16 if image_size >= 224 else max(2, min(16, image_size // 8))
        if image_size % patch_size:
            raise ValueError(f"vit_b_16: image_size {image_size} is not a multiple of patch_size {patch_size}")
        net = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=12, num_heads=12,
                                hidden_dim=768, mlp_dim=3072)
        _load_local_weights(net, "vit_b_16", weights_path, pretrained)
        if in_channels != 3:
            net.conv_proj = nn.Conv2d(in_channels, 768, patch_size, patch_size)
        self.net = net
        self.grid = image_size // patch_size
        self.low_channels = self.high_channels = self.out_dim = 768

    def forward(self, x):
        n = x.shape[0]
        tokens = self.net._process_input(x)
        cls = self.net.class_token.expand(n, -1, -1)
        tokens = self.net.encoder(torch.cat([cls, tokens], dim=1))
        grid = tokens[:, 1:].transpose(1, 2).reshape(n, -1, self.grid, self.grid)
        return BackboneOutput(tokens[:, 0], [grid, grid])


class MobileNetV3Backbone(Backbone):
    """torchvision's MobileNetV3-small ``features`` (hardswish, squeeze-excitation); split at stride 4."""

    def __init__(self, in_channels: int, pretrained: bool, weights_path) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v3_small(weights=None)
        _load_local_weights(net, "mobilenet_v3_small", weights_path, pretrained)
        feats = list(net.features)
        feats[0][0] = _adapt_in_channels(feats[0][0], in_channels)
        self.low = nn.Sequential(*feats[:2])  # stem (stride 2) + first block (stride 2): 16 channels
        self.high = nn.Sequential(*feats[2:])  # 576 channels
        self.low_channels, self.high_channels, self.out_dim = 16, 576, 576

    def forward(self, x):
        low = self.low(x)
        high = self.high(low)
        return BackboneOutput(high.mean((2, 3)), [low, high])

    def stages(self):  # features[2:4] (24 ch, stride 8), [4:9] (48 ch, stride 16), [9:] (576 ch, stride 32)
        return [self.low, self.high[0:2], self.high[2:7], self.high[7:]]


def _cbr(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNNBackbone(Backbone):
    """Tiny conv net for tests / smoke runs: stride-4 ``low`` (32 ch) and stride-8 ``high`` (64 ch) maps."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.low = nn.Sequential(_cbr(in_channels, 16, 1), _cbr(16, 32, 2), _cbr(32, 32, 2))
        self.high = _cbr(32, 64, 2)
        self.low_channels, self.high_channels, self.out_dim = 32, 64, 64
        self.low_stage = 2

    def forward(self, x):
        low = self.low(x)
        high = self.high(low)
        return BackboneOutput(high.mean((2, 3)), [low, high])

    def stages(self):
        return [self.low[0], self.low[1], self.low[2], self.high]


def build_backbone(arch: str, in_channels: int = 3, image_size: int = 64, stem: str = "imagenet",
                   pretrained: bool = False, weights_path: str | Path | None = None,
                   patch_size: int | None = None) -> Backbone:
    """A :class:`Backbone` for ``arch`` in :data:`ARCHS` (see the module docstring for adaptations)."""
    if arch in _RESNETS:
        return ResNetBackbone(arch, in_channels, stem, pretrained, weights_path)
    if arch in _VGG_CFG:
        return VGGBackbone(in_channels, pretrained, weights_path, arch)
    if arch == "mobilenet_v3_small":
        return MobileNetV3Backbone(in_channels, pretrained, weights_path)
    if arch == "densenet121":
        return DenseNetBackbone(in_channels, pretrained, weights_path)
    if arch == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights")
        return SmallCNNBackbone(in_channels)
    if arch == "vit_b_16":
        return ViTBackbone(in_channels, image_size, patch_size, pretrained, weights_path)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
