"""Models: the timm factory, bundles, CLIP. Importing the package registers clarivis's own timm
architectures (small_nets), so a bundle naming one loads in a fresh process."""

from clarivis.models import small_nets as small_nets  # noqa: F401 (registers with timm)
