"""What runs the model of a prediction: `torch` (clarivis.Classifier, on any device torch has) or
`onnx` (the runtime's Predictor on the bundle's exported model.onnx, or model.int8.onnx: no
torch in the model call). The one place that loads one, for `clarivis predict --backend` and
`clarivis serve --backend` alike; their names (BACKENDS, check_backend) are in prediction.py."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from clarivis.classifier import Classifier
from clarivis.data.expand import ImageInput, SkipHandler, expand_inputs
from clarivis.prediction import Prediction, check_backend
from clarivis.runtime import Predictor, predict_files


def load_predictor(backend: str, model: str | Path, *, device: str | None = None, reject: bool = True,
                   int8: bool = False) -> Classifier | Predictor:
    """The bundle's model on `backend`: both answers have predict/iter_predict(images, top_k=,
    batch_size=) giving Prediction rows. `device` is torch's; `int8` picks model.int8.onnx."""
    check_backend(backend)
    if backend == "onnx":
        return Predictor(model, int8=int8, reject=reject)
    return Classifier.load(model, device=device, reject=reject)


def predict_rows(model: str | Path, images: ImageInput | Iterable[ImageInput], *, backend: str = "torch",
                 top_k: int = 5, batch_size: int = 64, device: str | None = None, reject: bool = True,
                 int8: bool = False, on_skip: SkipHandler | None = None) -> Iterator[Prediction]:
    """Files, folders and globs -> Prediction rows in input order (unreadable inputs are error
    rows), on either backend; the model is loaded now, before the first row is asked for.
    `on_skip` (e.g. a clarivis.data.expand.SkippedFiles) hears of the files a folder walk leaves
    out, as the rows are made."""
    if on_skip is not None:
        images = _walked(images, on_skip)
    if backend == "onnx":
        # predict_files, not the Predictor's iter_predict: that one takes paths as files, and
        # this expands folders and globs as Classifier.iter_predict does
        return predict_files(model, images, top_k=top_k, batch_size=batch_size, int8=int8, reject=reject)
    classifier = load_predictor(backend, model, device=device, reject=reject)
    return classifier.iter_predict(images, top_k=top_k, batch_size=batch_size)


def _walked(images: ImageInput | Iterable[ImageInput], on_skip: SkipHandler) -> Iterator[ImageInput]:
    """The inputs, folders and globs expanded here, lazily, so that `on_skip` hears of what the
    walk leaves out (the backends' own expansion has no such hook). What comes out expands to
    itself again: an image path to itself; an input that gave an error entry (missing file,
    empty folder, no match, an image format clarivis does not read) to the same error. An
    in-memory image is then named "<image N>" by its place among the expanded inputs."""
    for source, item in expand_inputs(images, on_skip):
        yield item if isinstance(item, Image.Image) else source
