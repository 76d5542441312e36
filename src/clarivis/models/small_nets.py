"""Networks made for small images (<= 64 px) trained from scratch, registered as timm models so
the factory, bundles, ONNX export, Grad-CAM and every other stage take them by name.

timm's ImageNet stems (a stride-2 7x7 conv and a max-pool) shrink a 32 px image to 8 px before
the first block; these keep the resolution where the small image has it:

- `airnet_s` / `airnet_m` / `airnet_l`: in the spirit of airbench (github KellerJordan/
  cifar10-airbench, CIFAR-10 to 94% in seconds on one GPU): a 2x2 patch stem whose filters are
  the whitening of the data's 2x2 patches, then three conv groups (conv, max-pool, BatchNorm,
  GELU, conv, BatchNorm, GELU), a global max-pool and a scaled linear head. `airnet_m` has
  airbench94's widths, `airnet_l` airbench96's (three convs a group); `airnet_s` is a quarter of
  `airnet_m`'s compute for CPUs.
- `resnet18_small`: timm's resnet18 with a 3x3 stem (stride 1 by default, `stem_stride=2` for
  a quarter of the compute) and no max-pool: the usual CIFAR ResNet-18.

Whitening from the data: the stem's filters are fixed (a buffer, not trained, as in airbench)
and are set from the patch covariance of the first training batch the model sees, on its first
forward pass in train mode (a flag buffer records that it happened, so a loaded bundle or a
resumed run keeps its stem). No training code needs to know: `clarivis train` just trains.
Known limit: with `--ema`, timm's EMA averages float buffers too, so the EMA copy's stem moves
from its random start to the fitted filters only at the EMA's pace (decay 0.999: about 1,000
steps): on runs much shorter than that, leave --ema off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the usual name)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

# CIFAR-10's per-channel mean/std (RGB, 0-1): the statistics of small natural images that
# have no weights of their own to dictate them.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": CIFAR_MEAN, "std": CIFAR_STD,
        "first_conv": "stem.conv", "classifier": "fc", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "airnet_s.untrained": _cfg(),
    "airnet_m.untrained": _cfg(),
    "airnet_l.untrained": _cfg(),
    "resnet18_small.untrained": _cfg(first_conv="conv1"),
})


# ----------------------------------------------------------------------------- airnet


class WhiteningStem(nn.Module):
    """(N, C, H, W) -> (N, 2 * C * k * k, H - k + 1, W - k + 1): each k x k patch projected on the
    eigenvectors of the patch covariance, scaled by 1/sqrt(eigenvalue), with both signs (the GELU
    after it would otherwise drop half of each direction). Filters are a buffer: fixed, as in
    airbench; only the bias trains."""

    def __init__(self, in_chans: int = 3, kernel: int = 2, eps: float = 5e-4):
        super().__init__()
        dims = in_chans * kernel * kernel
        self.kernel, self.eps, self.out_chans = kernel, eps, 2 * dims
        weight = torch.empty(dims, in_chans, kernel, kernel)
        nn.init.kaiming_normal_(weight)  # until the data is seen: a plain random projection
        self.register_buffer("weight", torch.cat([weight, -weight]))  # (2*dims, C, k, k)
        self.bias = nn.Parameter(torch.zeros(2 * dims))
        # 1 once the filters came from data; an integer so weight averaging (EMA) copies it.
        self.register_buffer("whitened", torch.zeros((), dtype=torch.uint8))
        self._checked = False  # Python-side cache of `whitened`, so forward reads no tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._checked:
            self._whiten_from(x)
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    @torch.no_grad()
    def _whiten_from(self, x: torch.Tensor) -> None:
        if int(self.whitened):
            self._checked = True
            return  # loaded or resumed: the filters already came from data
        k = self.kernel
        # (N, C, H, W) -> (N * P, C * k * k) patches, in float32 whatever autocast says.
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * k * k)
        cov = patches.T @ patches / len(patches)  # (D, D), inputs already normalised
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(cov)  # every rank gets the same filters
            cov /= torch.distributed.get_world_size()
        if float(cov.trace()) < 1e-6:
            return  # a blank probe batch (e.g. a shape check): wait for real images
        self._checked = True
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)[:, None])
        filters = filters.flip(0).reshape(-1, x.shape[1], k, k)  # largest variance first
        self.weight.copy_(torch.cat([filters, -filters]))
        self.whitened.fill_(1)

    def _load_from_state_dict(self, *args, **kwargs):
        self._checked = False  # read the loaded flag on the next training forward
        super()._load_from_state_dict(*args, **kwargs)


def _batchnorm(width: int) -> nn.BatchNorm2d:
    # airbench's BatchNorm: fast running statistics (torch momentum 0.4), so short runs evaluate
    # with statistics of the last steps' weights, not of a long-gone average.
    return nn.BatchNorm2d(width, momentum=0.4)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    # airbench: the first in-channels filters start as identities (dirac), so a deep stack
    # starts close to passing its input through.
    nn.init.dirac_(conv.weight.data[:cin])
    return conv


class ConvGroup(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU -> (conv -> BN -> GELU) x (depth - 1): (N, cin, H, W) ->
    (N, cout, H // 2, W // 2)."""

    def __init__(self, cin: int, cout: int, depth: int = 2):
        super().__init__()
        self.conv1, self.pool = _conv(cin, cout), nn.MaxPool2d(2)
        self.norm1, self.act1 = _batchnorm(cout), nn.GELU()
        self.rest = nn.Sequential(*[
            nn.Sequential(_conv(cout, cout), _batchnorm(cout), nn.GELU()) for _ in range(depth - 1)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.act1(self.norm1(self.pool(self.conv1(x)))))


class AirNet(nn.Module):
    """Whitening stem -> GELU -> 3 ConvGroups -> global max-pool -> linear head x `head_scale`.
    At 32 px: 3x32x32 -> 24x31x31 -> w0x15x15 -> w1x7x7 -> w2x3x3 -> w2 -> classes."""

    # 7 settings + **_ignored (9 with self): timm builds every model from keyword settings, and
    # build_model_with_cfg passes some every net must accept (kept flat, as timm's own nets).
    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (64, 256, 256),
        depth: int = 2, drop_rate: float = 0.0, head_scale: float = 1 / 9, global_pool: str = "max",
        **_ignored,
    ):
        super().__init__()
        if global_pool not in ("max", "avg"):
            raise ValueError(f"global_pool must be 'max' or 'avg', got '{global_pool}'")
        self.num_classes, self.drop_rate, self.global_pool = num_classes, drop_rate, global_pool
        self.head_scale = head_scale  # airbench's 1/9: logits start small, the loss near ln(C)
        self.stem = WhiteningStem(in_chans)
        self.stem_act = nn.GELU()
        chans = [self.stem.out_chans, *widths]
        self.stages = nn.Sequential(*[ConvGroup(chans[i], chans[i + 1], depth) for i in range(len(widths))])
        self.num_features = self.head_hidden_size = widths[-1]
        self.feature_info = [{"num_chs": self.stem.out_chans, "reduction": 1, "module": "stem"}] + [
            {"num_chs": w, "reduction": 2 ** (i + 1), "module": f"stages.{i}"} for i, w in enumerate(widths)
        ]
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes, bias=False) if num_classes else nn.Identity()

    # timm's interface -------------------------------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\w+)"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        assert not enable, "gradient checkpointing is not supported"

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes, bias=False) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_features, H // 8 - 1, W // 8 - 1) roughly (3x3 at 32 px)."""
        return self.stages(self.stem_act(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.amax(dim=(2, 3)) if self.global_pool == "max" else x.mean(dim=(2, 3))  # (N, F)
        x = self.head_drop(x)
        if pre_logits or not self.num_classes:
            return x  # headless (num_classes=0): the pooled features, unscaled, as timm's nets
        return self.fc(x) * self.head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _airnet(variant: str, pretrained: bool = False, **kwargs) -> AirNet:
    return build_model_with_cfg(AirNet, variant, pretrained, feature_cfg={"flatten_sequential": True},
                                **kwargs)


@register_model
def airnet_s(pretrained: bool = False, **kwargs) -> AirNet:
    """airbench-style, half airbench94's widths (32/128/128): ~33M MACs at 32 px, about
    resnet18's at that size, in 6 convs instead of 20. For CPUs."""
    return _airnet("airnet_s", pretrained, **{"widths": (32, 128, 128), **kwargs})


@register_model
def airnet_m(pretrained: bool = False, **kwargs) -> AirNet:
    """airbench94's network (64/256/256): ~120M MACs at 32 px. For GPUs."""
    return _airnet("airnet_m", pretrained, **{"widths": (64, 256, 256), **kwargs})


@register_model
def airnet_l(pretrained: bool = False, **kwargs) -> AirNet:
    """airbench96's network (128/384/512, three convs a group): ~0.9G MACs at 32 px."""
    return _airnet("airnet_l", pretrained, **{"widths": (128, 384, 512), "depth": 3, **kwargs})


# ----------------------------------------------------------------------------- resnet


class SmallStemResNet(ResNet):
    """timm's ResNet with a 3x3 conv stem of `stem_stride` (1 or 2) and no max-pool: at 32 px
    layer1 sees 32x32 (stride 1) or 16x16 maps instead of 8x8."""

    def __init__(self, *args, stem_stride: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        width = self.conv1.out_channels
        self.conv1 = nn.Conv2d(self.conv1.in_channels, width, 3, stride=stem_stride, padding=1, bias=False)
        self.maxpool = nn.Identity()
        shrink = 4 // stem_stride  # the ImageNet stem reduced by 4 more than this one
        for info in self.feature_info:
            info["reduction"] = max(1, info["reduction"] // shrink)


@register_model
def resnet18_small(pretrained: bool = False, **kwargs) -> SmallStemResNet:
    """resnet18 with a 3x3 stride-1 stem and no max-pool (the CIFAR ResNet-18): ~0.56G MACs at
    32 px, 15x timm's resnet18 there; `stem_stride=2` for a quarter of that."""
    args = {"block": BasicBlock, "layers": (2, 2, 2, 2), **kwargs}
    return build_model_with_cfg(SmallStemResNet, "resnet18_small", pretrained, **args)


__all__ = ["CIFAR_MEAN", "CIFAR_STD", "AirNet", "SmallStemResNet", "WhiteningStem"]
