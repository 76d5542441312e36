"""Models (layer 2): `factory` creates any architecture by name through a small registry (timm,
clarivis's small-image nets registered with timm in `small_nets`, and CLIP as "open_clip:" names
in `clip`); `bundle` saves and loads them with their spec; `open_clip` and `open_clip_hub` find,
build and load open_clip models; `prompts` holds CLIP's prompt templates (torch-free);
`hub_cache` finds timm weights already downloaded."""
