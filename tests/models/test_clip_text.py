"""The CLIP classifier's head from text (models/clip.py): prompt ensembling and the model that
train --init-from-text starts from."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.tiny import full_clip

from clarivis.models.clip import class_text_embeddings, clip_text_classifier, text_initialized_model
from clarivis.models.open_clip import clip_tokenizer, resolve_clip

CLASSES = ["blue_triangle", "green_circle", "red_square"]


def test_ensemble_is_renormalized_mean_of_normalized_prompts(tiny_clip):
    clip = full_clip(tiny_clip.config, tiny_clip.weights)
    tokenizer = clip_tokenizer(resolve_clip(str(tiny_clip.config)))
    labels, templates = ["cat", "dog", "pizza"], ["a photo of a {}.", "art of the {}.", "a {}"]
    got = class_text_embeddings(clip, tokenizer, labels, templates)
    assert got.shape == (3, 32) and got.dtype == torch.float32
    with torch.no_grad():
        for c, label in enumerate(labels):
            prompts = F.normalize(clip.encode_text(tokenizer([t.format(label) for t in templates])), dim=-1)
            assert torch.allclose(got[c], F.normalize(prompts.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-6)
    # One template: the normalized embedding of that prompt itself.
    single = class_text_embeddings(clip, tokenizer, labels, ["{}"])
    with torch.no_grad():
        assert torch.allclose(single, F.normalize(clip.encode_text(tokenizer(labels)), dim=-1), atol=1e-6)


def test_text_initialized_head_is_the_zero_shot_classifier_of_the_folder_names(tiny_clip):
    name = f"open_clip:{tiny_clip.config}"
    model = text_initialized_model(name, CLASSES, img_size=32, weights=tiny_clip.weights)
    # Folder names are prompted as words: 'blue_triangle' -> 'a photo of the large blue triangle.'
    words, spec = clip_text_classifier(name, [c.replace("_", " ") for c in CLASSES],
                                       weights=tiny_clip.weights)
    assert not model.training and model.num_classes == 3 and spec.name == "tiny-clip"
    clip = full_clip(tiny_clip.config, tiny_clip.weights)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), words(x), atol=1e-5)
        # the head is logit_scale (100) times the unit text embeddings: CLIP's own logits
        image = F.normalize(clip.encode_image(x), dim=-1)
        assert torch.allclose(model(x), 100 * image @ F.normalize(model.head.weight, dim=-1).T, atol=1e-3)
