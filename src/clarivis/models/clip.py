"""A CLIP image classifier: open_clip's image tower + a linear head, with the timm classifier
interface the rest of clarivis uses (forward_features, forward_head, get_classifier,
reset_classifier, num_features, num_classes), so train, predict, evaluate, audit, explain and
export treat it like any timm model. Its architecture name is "open_clip:<name>" (the factory's
registry sends those names here); the open_clip config travels in the bundle
(model_kwargs["clip_config"]), so loading one needs neither a registry entry nor a download.
The head can start as CLIP's zero-shot classifier of class prompts (`text_initialized_model`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clarivis.errors import ModelError
from clarivis.models.open_clip import (
    ClipSpec,
    build_image_tower,
    clip_preprocess,
    clip_tokenizer,
    load_clip_for,
    open_clip_package,
    resolve_clip,
)
from clarivis.models.prompts import check_templates, prompt_label

PROMPTS_PER_BATCH = 256  # prompts per text-tower forward pass: bounded memory for 1000s of classes


class CLIPClassifier(nn.Module):
    """(N, 3, S, S) normalized images -> (N, C) logits of a linear head on L2-normalized CLIP
    image embeddings. The normalization is part of the model (not of preprocessing) so that
    zero-shot, fine-tuning, the linear probe and ONNX export all see the same features."""

    def __init__(self, visual: nn.Module, clip_config: dict, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.visual = visual
        self.clip_config = clip_config  # a plain dict: rebuilds this model from its bundle
        self.num_features = int(clip_config["embed_dim"])  # D, the joint image-text space
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)

    @property
    def bundle_model_kwargs(self) -> dict:
        """What save_bundle adds to config.model_kwargs so load_bundle can rebuild the tower."""
        return {"clip_config": self.clip_config}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, D) CLIP image embeddings (pooled and projected, unnormalized)."""
        return self.visual(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(N, D) embeddings -> (N, D) unit vectors (pre_logits) or (N, C) logits."""
        x = F.normalize(x, dim=-1)  # cosine geometry: the space CLIP's text embeddings live in
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head of `num_classes` rows (0: none, forward returns the unit embeddings).
        `global_pool` is timm's signature; the CLIP tower pools as it was trained to."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def set_text_head(self, text_embeddings: torch.Tensor, logit_scale: float) -> None:
        """Make the head CLIP's zero-shot classifier: row c = logit_scale * unit text embedding
        of class c, bias 0, so logits = logit_scale * cos(image, class text) (CLIP's logits;
        logit_scale is CLIP's learned temperature, 100 for the released models)."""
        c, d = text_embeddings.shape
        if self.num_classes != c or self.num_features != d:
            raise ModelError(f"text embeddings of shape {(c, d)} do not fit a head of "
                             f"{self.num_classes} classes on {self.num_features}-d features")
        self.head.weight.copy_(logit_scale * F.normalize(text_embeddings.float(), dim=-1))
        self.head.bias.zero_()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position and class embeddings stay undecayed, as open_clip trains them."""
        inner = getattr(self.visual, "no_weight_decay", lambda: set())()
        return {f"visual.{name}" for name in inner}

    def cam_layer(self) -> tuple[str, nn.Module, Callable | None] | None:
        """(module name, layer, tokens -> NCHW reshape) for Grad-CAM (explain/cam.py), or None
        when the tower is not one of open_clip's own (timm towers: the generic choice applies)."""
        visual = self.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        grid = getattr(visual, "grid_size", None)
        if blocks is not None and grid is not None and hasattr(blocks[-1], "ln_1"):
            # The last block's ln_1 feeds its attention: patch tokens there still steer the class
            # token (as for timm ViTs); after the block only the pooled token reaches the head.
            name = f"visual.transformer.resblocks.{len(blocks) - 1}.ln_1"
            return name, blocks[-1].ln_1, _tokens_to_map(int(grid[0]), int(grid[1]))
        if hasattr(visual, "layer4") and hasattr(visual, "attnpool"):  # ModifiedResNet (RN50...)
            return "visual.layer4", visual.layer4, None
        return None


def _tokens_to_map(h: int, w: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        """(N, prefix + h*w, C) batch-first tokens -> (N, C, h, w) map of the patch tokens."""
        prefix = tokens.shape[1] - h * w  # the class token (and registers, if any)
        if tokens.ndim != 3 or prefix < 0:
            raise ModelError(f"expected {h}x{w} patch tokens, got shape {tuple(tokens.shape)}; "
                             "use --method ig")
        return tokens[:, prefix:].reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


def create_clip_classifier(
    name: str, *, num_classes: int, img_size: int | None = None, pretrained: bool = False,
    weights: str | Path | None = None, drop_rate: float = 0.0, clip_config: dict | None = None,
    **model_kwargs,
) -> CLIPClassifier:
    """models.factory.create_model for "open_clip:<name or config JSON>": the image tower with
    CLIP weights (a checkpoint file, or the model's first hub tag with `pretrained`) and a head
    starting at zero, or all random. `clip_config` (from a bundle) wins over the name."""
    if model_kwargs:
        raise ModelError(f"open_clip models take no --model-kwargs ({', '.join(model_kwargs)}); "
                         "the architecture comes from the open_clip config")
    spec = resolve_clip(name, config=clip_config, image_size=img_size)
    if weights is None and not pretrained:
        return CLIPClassifier(build_image_tower(spec), spec.config, num_classes, drop_rate)
    clip, spec = load_clip_for(name, weights=weights, pretrained=pretrained, img_size=img_size,
                               clip_config=clip_config)
    model = CLIPClassifier(clip.visual, spec.config, num_classes, drop_rate)
    for p in model.head.parameters():
        nn.init.zeros_(p)  # a new head on pretrained features starts at 0 (see factory.zero_head)
    return model


def check_clip_name(name: str) -> None:
    """Raise ModelError for an unknown open_clip name or a missing/invalid config file."""
    resolve_clip(name)


def clip_pretrained_cfg(name: str) -> dict:
    """timm-style pretrained_cfg for "open_clip:<name>": input size, mean/std, interpolation."""
    spec = resolve_clip(name)
    pp = clip_preprocess(spec)
    return {"architecture": name, "input_size": (3, pp.img_size, pp.img_size), "mean": pp.mean,
            "std": pp.std, "interpolation": pp.interpolation, "fixed_input_size": True,
            "classifier": "head", "num_classes": 0}


# ----------------------------------------------------------------------------- head from text


@torch.no_grad()
def class_text_embeddings(clip: nn.Module, tokenizer, labels: Sequence[str],
                          templates: Sequence[str], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 (C, D): per label, the renormalized mean of its L2-normalized prompt embeddings
    (prompt ensembling, CLIP paper section 3.1.4; open_clip's build_zero_shot_classifier does it)."""
    per_batch = max(1, PROMPTS_PER_BATCH // len(templates))  # classes per text forward pass
    weights = open_clip_package().build_zero_shot_classifier(
        clip, tokenizer, list(labels), list(templates), num_classes_per_batch=per_batch, device=device)
    return weights.T.float().contiguous()  # (D, C) -> (C, D)


def clip_text_classifier(
    architecture: str, prompts: Sequence[str], *, weights: str | Path | None = None,
    pretrained: bool | str | None = None, templates: Sequence[str] | None = None,
    img_size: int | None = None, drop_rate: float = 0.0, device: torch.device | str = "cpu",
) -> tuple[CLIPClassifier, ClipSpec]:
    """(model in eval mode on `device`, its spec): a CLIPClassifier of `architecture` ("ViT-B-32",
    "open_clip:..." or a config JSON) whose head is CLIP's zero-shot classifier of `prompts`, one
    a class, each put into every template (None: DEFAULT_TEMPLATES). Weights from the file
    `weights`, else the hub tag `pretrained` (True or None: the model's first tag)."""
    templates = check_templates(templates)
    full, spec = load_clip_for(architecture, weights=weights, pretrained=pretrained or True,
                               img_size=img_size)
    full.to(device)
    text = class_text_embeddings(full, clip_tokenizer(spec), list(prompts), templates,
                                 device=device)  # (C, D) unit rows
    model = CLIPClassifier(full.visual, spec.config, len(prompts), drop_rate).to(device)
    model.set_text_head(text, logit_scale=float(full.logit_scale.detach().exp()))
    return model.eval(), spec


def text_initialized_model(
    architecture: str, class_names: Sequence[str], *, img_size: int | None = None,
    weights: str | Path | None = None, pretrained: bool | str | None = None,
    templates: Sequence[str] | None = None, drop_rate: float = 0.0,
) -> CLIPClassifier:
    """`clarivis train --init-from-text`: the CLIP classifier of `architecture` with its CLIP
    weights (as clip_text_classifier), in eval mode on the CPU, the head starting as the
    zero-shot classifier of the class folder names read as words ('_' as spaces)."""
    model, _ = clip_text_classifier(
        architecture, [prompt_label(c) for c in class_names], weights=weights, pretrained=pretrained,
        templates=templates, img_size=img_size, drop_rate=drop_rate)
    return model
