"""The typed options objects of the public functions (batch predict, suggest, check, audit,
serve): the same checks as the keyword arguments they replace, and the keywords still work."""

from __future__ import annotations

from dataclasses import replace

import pytest

from clarivis.active.suggest import SuggestOptions, suggest
from clarivis.batch_predict import PredictOptions, predict_to_file
from clarivis.datacheck import check_data
from clarivis.errors import ClarivisError
from clarivis.evaluate.audit import audit
from clarivis.serve.app import create_app


@pytest.mark.parametrize("options, fragment", [
    (dict(top_k=0), "--top-k"), (dict(batch_size=0), "--batch-size")])
def test_predict_options_check_as_the_keywords_did(options, fragment):
    with pytest.raises(ClarivisError, match=fragment):
        PredictOptions(**options)
    with pytest.raises(ClarivisError, match=fragment):
        replace(PredictOptions(), **options)


@pytest.mark.parametrize("options, fragment", [
    (dict(budget=0), "--budget"), (dict(strategy="best"), "--strategy"),
    (dict(batch_size=0), "--batch-size"), (dict(pool_factor=0), "pool_factor")])
def test_suggest_options_check_as_the_keywords_did(options, fragment):
    with pytest.raises(ClarivisError, match=fragment):
        SuggestOptions(**options)


def test_keywords_are_checked_before_any_work(tmp_path):
    # A wrong keyword or value fails at once: no model is loaded, no file written.
    with pytest.raises(ClarivisError, match="--top-k"):
        predict_to_file(tmp_path / "no-model", tmp_path, tmp_path / "out.csv", top_k=0)
    with pytest.raises(TypeError, match="topk"):
        predict_to_file(tmp_path / "no-model", tmp_path, tmp_path / "out.csv", topk=2)
    with pytest.raises(ClarivisError, match="--budget"):
        suggest(tmp_path, model=tmp_path / "no-model", budget=0)
    with pytest.raises(TypeError, match="fold"):
        check_data(tmp_path, fold=3)
    with pytest.raises(TypeError, match="robust"):
        audit(tmp_path / "no-model", tmp_path, robust=False)
    with pytest.raises(TypeError, match="max_file"):
        create_app(tmp_path / "no-model", max_file=4)
    assert not list(tmp_path.iterdir())
