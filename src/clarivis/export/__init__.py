"""Export a ModelBundle to ONNX (fp32, int8) and check it against PyTorch: `export_bundle`."""

from clarivis.export.pipeline import ExportedModel, ExportResult, export_bundle

__all__ = ["ExportResult", "ExportedModel", "export_bundle"]
