"""Why a model predicted what it did: Grad-CAM / Grad-CAM++ (CNNs and ViTs) and Integrated
Gradients heat maps, and PNG overlays of them."""

from clarivis.explain.explanations import Explanation, explain, explain_overlay
from clarivis.explain.maps import METHODS, heatmaps
from clarivis.explain.overlay import overlay_png

__all__ = ["METHODS", "Explanation", "explain", "explain_overlay", "heatmaps", "overlay_png"]
