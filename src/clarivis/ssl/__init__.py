"""Self-supervised pretraining of timm backbones on unlabeled images with lightly's methods
(SimCLR, BYOL, DINO): `clarivis.pretrain(DIR)` -> RUN/backbone.safetensors, which
`clarivis train LABELED --weights RUN/backbone.safetensors` fine-tunes. Nothing is imported
here: `clarivis.pretrain` (clarivis.ssl.run) pulls in torch and lightly when first used."""
