"""Active labeling (issue 6, "less labeling"): which unlabeled images to label next.

  scores.py    uncertainty of calibrated probabilities (margin, entropy, least confidence)
  kcenter.py   greedy k-center (core-set) over L2-normalized embeddings, chunked
  select.py    the strategies: hybrid (uncertainty pre-filter + k-center), margin, entropy,
               kcenter, random
  features.py  probabilities and embeddings from one forward pass per batch, streamed
  labeled.py   the already labeled images (by path and content hash)
  queue.py     queue.csv and the thumbnail page queue.html
  suggest.py   `clarivis suggest`: all of the above

Import the function from its module (`from clarivis.active.suggest import suggest`) or as
`clarivis.suggest`; this package imports nothing on its own."""
