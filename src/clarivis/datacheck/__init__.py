"""`clarivis check`: a dataset's problems before training (corrupt files, duplicates and leaks,
conflicting labels, class imbalance, odd images) and suspected label errors (cleanlab over
out-of-fold probabilities). A workflow: it composes data/, embeddings and training."""

from clarivis.datacheck.check import (
    CheckOptions,
    DataCheckResult,
    Finding,
    check_data,
    finding_thumbnails,
    ranked_findings,
    save_check,
    thumbnail_png,
)

__all__ = ["CheckOptions", "DataCheckResult", "Finding", "check_data", "finding_thumbnails",
           "ranked_findings", "save_check", "thumbnail_png"]
