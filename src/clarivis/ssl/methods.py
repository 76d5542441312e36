"""The three methods as lightly builds them: a timm backbone (headless, (B, 3, S, S) -> (B, D)),
lightly's projection/prediction heads and loss, and for BYOL and DINO a momentum (EMA) copy.
Head sizes follow lightly's CIFAR-10/Imagenette benchmarks rather than the ImageNet papers': a
few hundred to a few thousand units train on CPUs and small data where 4096-65536 would not."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from clarivis.extras import needs

with needs("ssl", "clarivis pretrain"):
    from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules.heads import (
        BYOLPredictionHead,
        BYOLProjectionHead,
        DINOProjectionHead,
        SimCLRProjectionHead,
    )
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

Views = list[torch.Tensor]  # V tensors (B, 3, s, s): 2 views, DINO 2 global + N local


class Method(nn.Module):
    """A backbone plus what one method adds. forward(views) -> (loss, backbone features (N, D))."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def momentum_update(self, step: int, total_steps: int) -> None:
        """Move the momentum copy towards the online network (BYOL, DINO); before each step."""

    def before_optimizer_step(self, warming_up: bool) -> None:
        """Adjust gradients after backward (DINO freezes its last layer during the warm-up)."""

    def export_backbone(self) -> nn.Module:
        """The backbone whose weights are saved: the one the method's evaluations use."""
        return self.backbone

    def no_weight_decay(self) -> set[str]:
        """timm's optimizer factory asks the top module; ViTs keep pos_embed/cls_token undecayed."""
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in names}


class SimCLR(Method):
    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__(backbone)
        self.projection_head = SimCLRProjectionHead(dim, dim, 128)  # SimCLR's 128-d output
        self.criterion = NTXentLoss(temperature=0.5)  # the SimCLR paper's CIFAR-10 temperature

    def forward(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(torch.cat(views[:2]))  # (2B, D): one pass for both views
        z0, z1 = self.projection_head(h).chunk(2)  # (B, 128) each
        return self.criterion(z0, z1), h


class BYOL(Method):
    # The target's EMA momentum, cosine-annealed to 1. BYOL's 0.996 suits 300-1000 ImageNet
    # epochs; in short runs on small data the target must follow faster (lightly's CIFAR-10
    # benchmark: 0.99).
    MOMENTUM = 0.99
    HIDDEN = 1024  # MLP width, as lightly's CIFAR-10 benchmark; BYOL's 4096 is 4x the compute

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__(backbone)
        self.projection_head = BYOLProjectionHead(dim, self.HIDDEN, 256)
        self.prediction_head = BYOLPredictionHead(256, self.HIDDEN, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def momentum_update(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(min(step, total_steps), total_steps, self.MOMENTUM, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

    def forward(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(views[:2])  # (2B, 3, S, S)
        h = self.backbone(x)
        p0, p1 = self.prediction_head(self.projection_head(h)).chunk(2)  # (B, 256) each
        with torch.no_grad():
            z0, z1 = self.projection_head_momentum(self.backbone_momentum(x)).chunk(2)
        # Symmetric: each view's prediction matches the target's projection of the other.
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0)), h


class DINO(Method):
    MOMENTUM = 0.99  # teacher EMA momentum, cosine to 1: lightly's CIFAR-10 value (as BYOL's)
    OUTPUT_DIM = 2048  # prototypes (lightly's CIFAR-10 value); DINO's 65536 is for ImageNet

    def __init__(self, backbone: nn.Module, dim: int, batch_norm: bool):
        super().__init__(backbone)
        # BatchNorm in the head for CNN backbones (lightly's CIFAR-10 ResNet DINO), none for
        # ViTs (DINO's). The last layer is frozen while the lr warms up (DINO: the first epoch),
        # which keeps the prototypes from collapsing early.
        self.head = self._head(dim, batch_norm)
        self.teacher_backbone = copy.deepcopy(backbone)
        # A second head with the student's weights (deepcopy cannot copy weight-normed layers).
        self.teacher_head = self._head(dim, batch_norm)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        # Teacher temperature 0.04 and centering (momentum 0.9) against collapse: lightly's
        # defaults, DINO's. The center is a buffer: it is saved and resumed with the model.
        self.criterion = DINOLoss(output_dim=self.OUTPUT_DIM)

    def _head(self, dim: int, batch_norm: bool) -> DINOProjectionHead:
        with warnings.catch_warnings():  # lightly's own use of torch's older weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            return DINOProjectionHead(dim, 512, 64, self.OUTPUT_DIM, batch_norm=batch_norm,
                                      freeze_last_layer=1)

    def momentum_update(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(min(step, total_steps), total_steps, self.MOMENTUM, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)

    def forward(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        global_x = torch.cat(views[:2])  # (2B, 3, S, S): the teacher sees the global crops only
        with torch.no_grad():
            teacher_out = list(self.teacher_head(self.teacher_backbone(global_x)).chunk(2))
        h = self.backbone(global_x)
        student_out = list(self.head(h).chunk(2))
        if len(views) > 2:  # local crops: (N*B, 3, s, s), one pass
            local = self.head(self.backbone(torch.cat(views[2:])))
            student_out += list(local.chunk(len(views) - 2))
        return self.criterion(teacher_out, student_out), h

    def before_optimizer_step(self, warming_up: bool) -> None:
        self.head.cancel_last_layer_gradients(current_epoch=0 if warming_up else 1)

    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone  # DINO evaluates the teacher: its features are the better ones


def build_method(name: str, backbone: nn.Module) -> Method:
    """`backbone` is a timm model created with num_classes=0 (its forward gives features)."""
    dim = backbone.num_features
    if name == "simclr":
        return SimCLR(backbone, dim)
    if name == "byol":
        return BYOL(backbone, dim)
    if name == "dino":
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
        return DINO(backbone, dim, batch_norm=has_bn)
    raise ValueError(f"unknown method {name!r}")
