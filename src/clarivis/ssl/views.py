"""The multi-view augmentations of each method: lightly's own transforms, sized to the input.

Their defaults are the ImageNet recipes at 224 px. Small images (<= 64 px, CIFAR/STL-like) get
these changes, for these reasons:
- no Gaussian blur and colour jitter at half strength: at 32 px a blur of sigma 0.1-2 px wipes
  out most of the detail there is (the SimCLR paper's CIFAR-10 setting, appendix B.9, and
  lightly's advice for small images);
- crops of at least 20% of the image (not 8%): an 8% crop of 32 px is 9 px across and, upsampled
  3.5x, shows a blur with little of any object left to match across views;
- DINO without local crops: a 96/224 local crop of 32 px is 14 px, too little to match (lightly's
  CIFAR-10 benchmark runs DINO with none); with global crops only, DINO's authors advise global
  crop scales from 0.14 instead of 0.4 (at small sizes the 20% floor above applies).
Models with a fixed input size (ViTs' position embeddings) take one size only: no local crops.
"""

from __future__ import annotations

from clarivis.extras import needs

with needs("ssl", "clarivis pretrain"):
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        DINOTransform,
        SimCLRTransform,
    )
    from lightly.transforms.multi_view_transform import MultiViewTransform

SMALL_IMAGE = 64  # px: at or below, the small-image settings above
SMALL_MIN_SCALE = 0.2  # smallest crop, fraction of the image area, small images
DINO_LOCAL_VIEWS = 6  # DINO's default number of local crops
DINO_LOCAL_RATIO = 96 / 224  # DINO's local crop side relative to the global one


def view_transform(method: str, img_size: int, mean, std, *, fixed_input_size: bool = False
                   ) -> MultiViewTransform:
    """PIL image -> list of float (3, s, s) views, normalised with the backbone's mean/std (what
    `clarivis train` will feed the same backbone)."""
    small = img_size <= SMALL_IMAGE
    normalize = {"mean": list(mean), "std": list(std)}
    common = {"min_scale": SMALL_MIN_SCALE if small else 0.08,
              "cj_strength": 0.5 if small else 1.0, "normalize": normalize}
    if method == "simclr":
        return SimCLRTransform(input_size=img_size, gaussian_blur=0.0 if small else 0.5, **common)
    if method == "byol":
        # BYOL's two views differ: view 1 always blurred, view 2 rarely but solarized.
        return BYOLTransform(
            BYOLView1Transform(input_size=img_size, gaussian_blur=0.0 if small else 1.0, **common),
            BYOLView2Transform(input_size=img_size, gaussian_blur=0.0 if small else 0.1, **common),
        )
    if method == "dino":
        return _dino_transform(img_size, normalize, small, local=not (small or fixed_input_size))
    raise ValueError(f"unknown method {method!r}")


def _dino_transform(img_size: int, normalize: dict, small: bool, *, local: bool) -> DINOTransform:
    global_min = 0.4 if local else (SMALL_MIN_SCALE if small else 0.14)
    local_size = max(16, round(img_size * DINO_LOCAL_RATIO / 8) * 8)  # px, a multiple of 8
    return DINOTransform(
        global_crop_size=img_size, global_crop_scale=(global_min, 1.0),
        local_crop_size=local_size, n_local_views=DINO_LOCAL_VIEWS if local else 0,
        gaussian_blur=(0.0, 0.0, 0.0) if small else (1.0, 0.1, 0.5), normalize=normalize,
    )
