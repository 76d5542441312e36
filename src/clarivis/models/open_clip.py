"""Find, build and load open_clip CLIP models: by open_clip name ("ViT-B-32") or by a path to an
open_clip model-config JSON (custom architectures need no registry entry); weights from a local
checkpoint file or, given a tag ("laion2b_s34b_b79k"), open_clip's hub (models/open_clip_hub.py).

The open_clip package is imported on first use (`open_clip_package`): the factory knows the
"open_clip:" names, and importing it must not need open_clip."""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from torch import nn

from clarivis.data.transforms import INTERPOLATIONS, Preprocess
from clarivis.errors import ModelError
from clarivis.extras import needs
from clarivis.models.open_clip_hub import hub_weights
from clarivis.spec import CLIP_PREFIX  # noqa: F401  (the CLIP names' prefix, re-exported for models/)

_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
# open_clip resize modes -> clarivis Preprocess.resize_mode (data/transforms.py).
_RESIZE_MODES = {"shortest": "crop", "longest": "pad", "squash": "squash"}


def open_clip_package() -> ModuleType:
    """The open_clip package, imported on first use: only CLIP models need it (the 'zeroshot'
    extra; without it, one line naming the extra)."""
    with needs("zeroshot", "CLIP (clarivis zeroshot, open_clip: models)"):
        import open_clip  # optional heavy dependency (text towers, tokenizers): CLIP models only
    return open_clip


def is_clip_name(name: str | None) -> bool:
    """True for "open_clip:<name or config JSON>", the architecture names of CLIP classifiers."""
    return bool(name) and name.startswith(CLIP_PREFIX)


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip architecture: its config and the preprocessing its weights expect."""

    name: str  # open_clip registry name, or the config file's stem
    config: dict  # open_clip model config (embed_dim, vision_cfg, text_cfg, quick_gelu...); JSON-safe
    preprocess: dict  # open_clip PreprocessCfg fields: size, mean, std, interpolation, resize_mode
    registered: bool  # a registry name: open_clip's own tokenizer choice applies

    @property
    def image_size(self) -> int:
        size = self.config["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])


def resolve_clip(spec: str, *, config: dict | None = None, pretrained: str | None = None,
                 image_size: int | None = None) -> ClipSpec:
    """The architecture named by `spec` ("ViT-B-32", "open_clip:ViT-B-32" or a config JSON path).
    `config` (a bundle's stored config) wins over the name; `pretrained` (a hub tag) supplies
    the preprocessing and activation those weights were trained with; `image_size` (px) rebuilds
    the image tower for another input size."""
    oc = open_clip_package()
    name = spec.removeprefix(CLIP_PREFIX).strip()
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ModelError(f"'{name}': pass the repository's open_clip_config.json as --clip and its "
                         "weights file as --clip-weights (download them once)")
    overlay: dict = {}
    if config is not None:
        model_cfg = copy.deepcopy(config)
    elif _is_config_file(name):
        name, model_cfg, overlay = _read_config_file(Path(name).expanduser())
    else:
        model_cfg = oc.get_model_config(name.replace("/", "-"))
        if model_cfg is None:
            raise ModelError(_unknown_model_message(name))
        name = name.replace("/", "-")
    registered = oc.get_model_config(name) is not None
    tag_cfg = _tag_config(name, pretrained, registered)
    if tag_cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # e.g. OpenAI's weights: QuickGELU, whatever the name says
    if image_size:
        model_cfg["vision_cfg"]["image_size"] = int(image_size)
    merge = oc.transform.merge_preprocess_dict
    preprocess = merge(merge(oc.transform.PreprocessCfg(), tag_cfg), overlay)
    resolved = ClipSpec(name, model_cfg, preprocess, registered)
    preprocess["size"] = resolved.image_size  # the tower's input size decides
    return resolved


def clip_preprocess(spec: ClipSpec) -> Preprocess:
    """open_clip's eval preprocessing as a clarivis Preprocess (stored in bundles, used by
    predict, the ONNX runtime and serving): shortest side resized, then centre-cropped, with
    the weights' mean/std and interpolation (bicubic for every CLIP so far)."""
    pp = spec.preprocess
    interpolation = pp.get("interpolation", "bicubic")
    return Preprocess(
        img_size=spec.image_size,
        resize_mode=_RESIZE_MODES.get(pp.get("resize_mode", "shortest"), "crop"),
        mean=tuple(float(v) for v in pp["mean"]), std=tuple(float(v) for v in pp["std"]),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
    )


def build_clip(spec: ClipSpec) -> nn.Module:
    """The full CLIP model (image and text towers) with random weights, on the CPU in fp32."""
    oc = open_clip_package()
    cfg = copy.deepcopy(spec.config)
    text_cfg, vision_cfg = cfg["text_cfg"], cfg["vision_cfg"]
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg["hf_model_pretrained"] = False  # the CLIP checkpoint supplies the text weights
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # likewise the image weights
    # The model class as open_clip.create_model picks it; that function only builds registered
    # names or hub/local folders, not a config given as a dict.
    custom_text = cfg.pop("custom_text", False) or hf_text
    if not custom_text:
        model_class = oc.CLIP
    else:
        model_class = oc.CoCa if "multimodal_cfg" in cfg else oc.CustomTextCLIP
    try:
        return model_class(**cfg)
    except Exception as err:  # noqa: BLE001 - a bad config raises anything from any layer
        raise ModelError(f"cannot build open_clip model '{spec.name}' from its config "
                         f"({type(err).__name__}: {_first_line(err)[:200]})") from None


def build_image_tower(spec: ClipSpec) -> nn.Module:
    """The image tower alone, random weights. open_clip's private _build_vision_tower is the
    builder its CLIP class calls; using it directly spares a bundle load the text tower
    (ViT-B-32: 63M of its 151M parameters), which a classifier never runs."""
    vision_cfg = dict(spec.config["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # the bundle's weights follow
    try:
        return open_clip_package().model._build_vision_tower(
            spec.embed_dim, vision_cfg, quick_gelu=bool(spec.config.get("quick_gelu", False)))
    except Exception as err:  # noqa: BLE001 - a bad config raises anything from any layer
        raise ModelError(f"cannot build the image tower of open_clip '{spec.name}' "
                         f"({type(err).__name__}: {str(err)[:200]})") from None


def load_clip(spec: ClipSpec, *, weights: str | Path | None = None,
              pretrained: str | None = None) -> nn.Module:
    """The full CLIP model in eval mode with weights from the file `weights`, else from the hub
    tag `pretrained` (needs a network, or open_clip's cache), else random."""
    path = None  # the file is found (or downloaded) first: a missing one fails before the build
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"CLIP weights file {path} not found; pass an open_clip checkpoint "
                             "(.safetensors, .bin or .pt)")
    elif pretrained:
        path = hub_weights(spec.name, pretrained, _tag_config(spec.name, pretrained, spec.registered))
    model = build_clip(spec)
    if path is None:
        return model.eval()
    try:
        # open_clip's loader: safetensors or torch files, nested/DDP keys, OpenAI and timm layouts
        # converted, position embeddings resized to the tower's image size.
        open_clip_package().load_checkpoint(model, str(path), strict=True)
    except Exception as err:  # noqa: BLE001 - pickle, safetensors and load_state_dict errors
        raise ModelError(f"weights in {path.name} do not fit open_clip '{spec.name}' "
                         f"({_first_line(err)[:200]}); pass the --clip model they were made for") from None
    return model.eval()


def load_clip_for(name: str, *, weights: str | Path | None = None, pretrained: bool | str = False,
                  img_size: int | None = None, clip_config: dict | None = None) -> tuple[nn.Module, ClipSpec]:
    """(full CLIP model with weights, its spec) for a classifier. Weights from the file
    `weights`, else the hub tag `pretrained` (True: the model's first tag). A tag named along
    with a file is not downloaded: it says which weights the file holds (their preprocessing
    and activation)."""
    spec = resolve_clip(name, config=clip_config, image_size=img_size)
    tag = pretrained if isinstance(pretrained, str) else None
    if tag is None and pretrained and weights is None:
        tag = default_tag(spec)
    if tag:
        spec = resolve_clip(name, config=clip_config, pretrained=tag, image_size=img_size)
    return load_clip(spec, weights=weights, pretrained=None if weights else tag), spec


def clip_tokenizer(spec: ClipSpec):
    """open_clip's tokenizer for the text tower (its BPE vocabulary ships with open_clip)."""
    oc = open_clip_package()
    text = spec.config["text_cfg"]
    context = int(text.get("context_length", 77))  # tokens per prompt; the tower's position table
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    try:
        if spec.registered:
            return oc.get_tokenizer(spec.name, context_length=context)
        if text.get("hf_tokenizer_name"):
            return oc.tokenizer.HFTokenizer(text["hf_tokenizer_name"], context_length=context,
                                            tokenizer_mode=text.get("tokenizer_mode"), **kwargs)
        return oc.SimpleTokenizer(context_length=context, **kwargs)
    except Exception as err:  # noqa: BLE001 - HF tokenizers fail offline with many types
        raise ModelError(f"cannot load the tokenizer of open_clip '{spec.name}' "
                         f"({_first_line(err)[:200]}); it may need a download") from None


def default_tag(spec: ClipSpec) -> str:
    """The first hub tag open_clip lists for the model (its reference weights, e.g. 'openai')."""
    tags = open_clip_package().list_pretrained_tags_by_model(spec.name) if spec.registered else []
    if not tags:
        raise ModelError(f"open_clip has no hub weights for '{spec.name}'; pass a weights file")
    return tags[0]


def _is_config_file(name: str) -> bool:
    if name.lower().endswith(".json"):
        return True
    path = Path(name).expanduser()
    return path.suffix != "" and path.is_file()


def _read_config_file(path: Path) -> tuple[str, dict, dict]:
    """(name, model config, preprocess overlay) from an open_clip model-config JSON, either the
    bare config (open_clip/model_configs/*.json) or a hub open_clip_config.json ({model_cfg,
    preprocess_cfg})."""
    if not path.is_file():
        raise ModelError(f"CLIP model config {path} not found; pass an open_clip name "
                         "(e.g. ViT-B-32) or an existing model-config JSON file")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read CLIP model config {path} ({type(err).__name__})") from None
    overlay = raw.get("preprocess_cfg", {}) if isinstance(raw, dict) else {}
    cfg = raw.get("model_cfg", raw) if isinstance(raw, dict) else raw
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), (dict, int)) for k in _REQUIRED_KEYS):
        raise ModelError(f"{path} is not an open_clip model config (it needs embed_dim, vision_cfg "
                         "and text_cfg, as in open_clip/model_configs/*.json)")
    name = path.parent.name if path.stem == "open_clip_config" else path.stem
    return name, cfg, overlay


def _tag_config(name: str, tag: str | None, registered: bool) -> dict:
    """The hub tag's settings (mean, std, interpolation, resize mode, quick_gelu). Without a tag:
    the settings all the model's tags share (most models), else open_clip's defaults."""
    oc = open_clip_package()
    if tag:
        if not registered:
            raise ModelError(f"hub weights (--pretrained {tag}) need an open_clip model name; "
                             "with a config file pass a weights file")
        cfg = oc.get_pretrained_cfg(name, tag)
        if not cfg:
            tags = oc.list_pretrained_tags_by_model(name)
            raise ModelError(f"open_clip has no weights '{tag}' for '{name}'; tags: "
                             f"{', '.join(tags[:8]) or 'none'}")
        return dict(cfg)
    if not registered:
        return {}
    keys = ("mean", "std", "interpolation", "resize_mode")
    settings = {tuple(oc.get_pretrained_cfg(name, t).get(k) for k in keys)
                for t in oc.list_pretrained_tags_by_model(name)}
    if len(settings) != 1:
        return {}
    return {k: v for k, v in zip(keys, settings.pop(), strict=True) if v is not None}


def _unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, open_clip_package().list_models(), n=4, cutoff=0.5)
    hint = f" (similar: {', '.join(close)})" if close else ""
    return (f"unknown open_clip model '{name}'{hint}; see open_clip.list_models(), or pass the "
            "path of a model-config JSON file")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else err.__class__.__name__
