"""The drift monitor: what served traffic looked like (volume, latency, confidence) and whether
the predicted classes still look like they did on validation (the baseline in the bundle). For a
multi-label model the log's label is an image's set (names joined by ';'): each label of a set
is counted, and each label's live rate (share of images holding it) is compared with its rate on
validation (the baseline's label_rates).

Everything is computed in the database with aggregates (GROUP BY, window functions, index walks),
so a report costs a few queries whatever the log's size, never a Python list of every row.
Torch-free, like the prediction log: the service may call it from a process without torch.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.fileio import atomic_write
from clarivis.prediction import LABEL_SEP, UNKNOWN_LABEL
from clarivis.serve.predlog import (
    LogDatabase,
    PredictionLog,
    as_utc,
    default_db_url,
    predictions,
    public_url,
    safe_url,
    to_naive_utc,
)
from clarivis.spec import bundle_version, read_bundle_config, resolve_bundle_path

with needs("serve", "clarivis monitor"):
    from scipy import stats
    from sqlalchemy import Integer, case, extract, func, select
    from sqlalchemy import cast as sqlcast
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

# Population Stability Index thresholds, the rule of thumb from credit scoring (Siddiqi, "Credit
# Risk Scorecards", 2006; Yurdakul, "Statistical properties of the PSI", 2018): below 0.1 the
# population is stable, 0.1-0.2 a moderate shift worth watching, above 0.2 a significant shift
# that usually means the model sees different data than it was validated on.
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.2
# Share given to a class with no predictions, so ln(live / baseline) stays finite. 1e-4 is far
# below any real share at the sizes a log holds, so it only matters for a class that appears in
# live traffic but never on validation (or the reverse), and then PSI rightly comes out large.
PSI_EPSILON = 1e-4
# Chi-square and KS are flagged when the difference is very unlikely to be sampling noise. At high
# traffic even a tiny, harmless shift reaches p < 0.01, so read them together with PSI (effect size).
P_VALUE_ALPHA = 0.01
# Fewer predictions than this give no drift flags: chi-square's rule of at least ~5 expected per
# class fails, and PSI's noise floor under no drift, about (classes - 1) / n, nears PSI_MODERATE.
MIN_DRIFT_PREDICTIONS = 30
# "unknown" answers are flagged when they exceed the rate expected from validation (1 - accept
# rate of the open-set threshold) by 5 percentage points and a binomial test says p < 0.01: then
# a noticeable share of traffic is unlike any training class.
UNKNOWN_EXCESS = 0.05
# A multi-label model's label is flagged when its live rate (share of images predicted to hold
# it) differs from its validation rate by more than 5 percentage points and a two-sided binomial
# test says p < 0.01 / classes (Bonferroni: one test a label, so more labels would otherwise
# mean more false alarms).
LABEL_RATE_CHANGE = 0.05
# Up to this span the time buckets are hours (at most 48 of them), beyond it days.
HOURLY_SPAN = timedelta(hours=48)

REVIEW_COLUMNS = ["id", "time", "model_version", "sha256", "label", "confidence", "ood_score", "has_image"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# The oldest --since accepted: ten years back. Older is a typo (99999999d), and a window that
# long would be thousands of daily buckets of nothing.
MAX_SINCE = timedelta(days=3660)
# The service writes its own recorded predictions before a report, waiting at most this long.
SERVICE_FLUSH_S = 1.0
LATENCY_PERCENTILES = (50, 95, 99)
CONFIDENCE_LOW_PERCENTILE = 10  # the per-bucket "p10" of confidence over time
CONFIDENCE_BINS = 100  # bins of [0, 1] the per-bucket p10 is read from (within 0.01 of exact)


def parse_since(value: str | datetime | None, now: datetime | None = None) -> datetime | None:
    """'24h', '30m', '7d', '2w' (before now) or an ISO date/time ('2024-05-01', '2024-05-01T12:00Z';
    without a zone it is UTC) -> an aware UTC datetime. None stays None. A time more than
    MAX_SINCE before now, or after now, is a ClarivisError."""
    if value is None:
        return None
    now = as_utc(now) if now is not None else datetime.now(UTC)
    if isinstance(value, datetime):
        start = as_utc(value)
    elif match := _DURATION.match(value):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        start = now - timedelta(seconds=seconds) if seconds <= MAX_SINCE.total_seconds() else None
    else:
        try:
            start = as_utc(datetime.fromisoformat(value.strip()))
        except (ValueError, OverflowError):  # OverflowError: year 1 in a zone east of UTC
            raise ClarivisError(f"--since '{value:.40}' is not a time; use a duration before now like "
                                "24h, 7d or 30m, or an ISO date/time like 2024-05-01 or 2024-05-01T12:00Z"
                                ) from None
    if start is None or start < now - MAX_SINCE:
        raise ClarivisError(f"--since '{str(value):.40}' is more than {MAX_SINCE.days} days back; use a "
                            "later time like 30d, or leave it out for the whole log")
    if start > now:
        raise ClarivisError(f"--since '{str(value):.40}' is after now ({now.isoformat(timespec='seconds')}); "
                            "use a duration before now like 24h or an earlier date")
    return start


def bundle_info(model_dir: str | Path) -> tuple[Path, dict, str]:
    """(bundle folder, config.json as a dict, model version) without importing torch."""
    folder = resolve_bundle_path(model_dir)
    return folder, read_bundle_config(folder).to_dict(), bundle_version(folder)


def monitor_report(model_dir: str | Path, db_url: str | None = None, since: str | datetime | None = None,
                   *, review_limit: int = 100, now: datetime | None = None, for_client: bool = False) -> dict:
    """Volume, latency, confidence, class drift against the bundle's validation baseline, and the
    lowest-confidence predictions to relabel. Drift uses only predictions of this bundle's version
    (the baseline describes this model); the other sections cover every version in the window.
    `for_client`: no server paths (no model_dir, the database by file name), for HTTP answers."""
    folder, config, version = bundle_info(model_dir)
    now = as_utc(now) if now is not None else datetime.now(UTC)
    start = parse_since(since, now)
    url = db_url or default_db_url(folder)
    shown = public_url(url) if for_client else safe_url(url)
    if _missing_sqlite_file(url):
        report = _empty_report(None if for_client else folder, version, shown, start, now)
        report["notes"].append(f"no prediction log at {shown} yet; serve the model to start one")
        report["drift"] = _drift_or_none(config, {}, report["notes"])
        return report
    db = LogDatabase(url)
    try:
        return _report(db, config, version, start, now, review_limit,
                       model_dir=None if for_client else folder, shown=shown)
    finally:
        db.dispose()


class ServiceMonitor:
    """/v1/monitor of a running service: built once with its open log (no engine per call) and
    the bundle's config and version (the weights hashed once, at start). Reports carry no server
    path and add `prediction_log`, the log's status (journal backlog, database reachable)."""

    def __init__(self, model_dir: str | Path, log: PredictionLog, *, version: str | None = None) -> None:
        folder = resolve_bundle_path(model_dir)
        self.config = read_bundle_config(folder).to_dict()
        self.version = version or bundle_version(folder)
        self.log = log

    def report(self, since: str | datetime | None = None, *, review_limit: int = 100,
               now: datetime | None = None) -> dict:
        """monitor_report's answer for this service; a bad `since` is a ClarivisError (a 422).
        Raises LogUnavailableError (a 503) while the database cannot be read."""
        now = as_utc(now) if now is not None else datetime.now(UTC)
        start = parse_since(since, now)
        self.log.flush(SERVICE_FLUSH_S)  # this process's answered predictions are counted
        report = _report(self.log.db, self.config, self.version, start, now, review_limit,
                         model_dir=None, shown=self.log.public_url)
        report["prediction_log"] = self.log.status()
        return report


def write_review_csv(report_or_rows: dict | list[dict], path: str | Path) -> Path:
    """The review queue (a report's or the rows themselves) as CSV, lowest confidence first."""
    rows = report_or_rows["review_queue"] if isinstance(report_or_rows, dict) else report_or_rows
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=REVIEW_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
    return path


# ----------------------------------------------------------------------------- reading the log


def _missing_sqlite_file(url: str) -> bool:
    """A SQLite log that was never written: report it empty rather than create the file."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # LogDatabase turns it into a ClarivisError with an example
    database = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and \
        not Path(database).expanduser().is_file()


@dataclass
class _Aggregates:
    """What the report needs from the log, each computed by the database."""

    total: int = 0
    first: datetime | None = None  # oldest and newest time in the window (UTC)
    last: datetime | None = None
    confidence_mean: float = 0.0  # all versions
    unknown: int = 0  # answers 'unknown', all versions
    latency: dict | None = None  # p50, p95, p99, mean, max
    versions: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # this version's answers per label
    live_counts: np.ndarray | None = None  # this version's confidence on the baseline's bins
    bucket_size: int = 3600  # seconds
    buckets: dict[int, tuple[int, float, float]] = field(default_factory=dict)  # start: n, mean, p10
    queue: list[dict] = field(default_factory=list)


def _report(db: LogDatabase, config: dict, version: str, start: datetime | None, now: datetime,
            review_limit: int, *, model_dir: Path | None, shown: str) -> dict:
    report = _empty_report(model_dir, version, shown, start, now)
    if not db.has_table():  # a server database nothing was served into yet
        report["notes"].append(f"no prediction log at {shown} yet; serve the model to start one")
        report["drift"] = _drift_or_none(config, {}, report["notes"])
        return report
    try:
        agg = _aggregate(db, version, start, now, _confidence_edges(config), review_limit)
    except SQLAlchemyError as err:
        db.raise_unavailable(err)
    return _fill(report, agg, config, version, start, now)


def _aggregate(db: LogDatabase, version: str, start: datetime | None, now: datetime,
               edges: np.ndarray, review_limit: int) -> _Aggregates:
    c = predictions.c
    window = [c.time >= to_naive_utc(start)] if start is not None else []
    agg = _Aggregates()
    conn_options = {"isolation_level": "REPEATABLE READ"} if db.dialect == "postgresql" else {}
    with db.engine.connect().execution_options(**conn_options) as conn:  # PostgreSQL: one snapshot
        # One pass over the window (the covering index ix_predictions_monitor) grouped by
        # version and label: totals, versions, this version's labels, the unknown count.
        groups = conn.execute(
            select(c.model_version, c.label, func.count(), func.min(c.time), func.max(c.time),
                   func.sum(c.confidence), func.sum(c.latency_ms), func.max(c.latency_ms))
            .where(*window).group_by(c.model_version, c.label)).all()
        if not groups:
            return agg
        agg.total = sum(int(g[2]) for g in groups)
        agg.first, agg.last = as_utc(min(g[3] for g in groups)), as_utc(max(g[4] for g in groups))
        agg.confidence_mean = sum(float(g[5]) for g in groups) / agg.total
        agg.unknown = sum(int(g[2]) for g in groups if g[1] == UNKNOWN_LABEL)
        for v, label, n, *_ in groups:
            agg.versions[str(v)] = agg.versions.get(str(v), 0) + int(n)
            if v == version:
                agg.labels[str(label)] = int(n)
        agg.versions = dict(sorted(agg.versions.items()))
        bin_index = _bin_expression(c.confidence, edges)
        agg.live_counts = np.zeros(len(edges) - 1, dtype=np.int64)
        current = [*window, c.model_version == version]
        for b, n in conn.execute(select(bin_index, func.count()).where(*current).group_by(bin_index)):
            agg.live_counts[int(b)] = int(n)
        agg.latency = {f"p{q}": _percentile_by_offset(conn, c.latency_ms, window, agg.total, q)
                       for q in LATENCY_PERCENTILES}
        agg.latency |= {"mean": sum(float(g[6]) for g in groups) / agg.total,
                        "max": max(float(g[7]) for g in groups)}
        # Hours for a window up to HOURLY_SPAN, else UTC days (the window of the report: since..now).
        span = (now if start else agg.last) - (start or agg.first)
        agg.bucket_size = 3600 if span <= HOURLY_SPAN else 86400
        agg.buckets = _buckets(conn, db.dialect, window, agg.bucket_size)
        agg.queue = _review_queue(conn, window, review_limit)
    return agg


def _bin_expression(column, edges: np.ndarray):
    """The np.histogram bin of a value clipped to the edges, as SQL: bin i holds edges[i] <= v <
    edges[i+1], the last one its right edge too (the same CASE on SQLite and PostgreSQL)."""
    inner = [float(e) for e in edges[1:-1]]
    if not inner:
        return case((column.is_not(None), 0), else_=0)
    return case(*[(column < e, i) for i, e in enumerate(inner)], else_=len(inner))


def _percentile_by_offset(conn, column, window: list, n: int, q: float) -> float:
    """numpy's default (linear) percentile, exact, from the two order statistics around
    q * (n - 1), read with ORDER BY ... LIMIT 2 OFFSET k. The latency index (latency_ms, time)
    hands them over in order, reading only index entries, where an approximate histogram would
    have to pick bucket widths for latencies from 1 ms to minutes; PostgreSQL's percentile_cont
    is exact too, but sorts and has no SQLite equivalent."""
    pos = (n - 1) * q / 100
    lo = math.floor(pos)
    values = conn.execute(select(column).where(*window).order_by(column).limit(2).offset(lo)).scalars().all()
    return _lerp(values, pos - lo)


def _buckets(conn, dialect: str, window: list, size: int) -> dict[int, tuple[int, float, float]]:
    """{bucket start, epoch seconds: (count, mean confidence, 10th percentile of confidence)} from
    one GROUP BY (time bucket, confidence to CONFIDENCE_BINS bins). The mean is exact (sums);
    the percentile is read off the bins, linear inside the one it falls in, so it is within one
    bin width (0.01) of the exact value: a chart's precision, for one pass over the window where
    an exact one needs a sort of every row (ROW_NUMBER() OVER (PARTITION BY bucket ...) took 4x
    the whole report's time on 100k rows in SQLite)."""
    c = predictions.c
    bucket = _time_bucket(c.time, dialect, size)
    scaled = c.confidence * CONFIDENCE_BINS
    bin_ = sqlcast(scaled, Integer) if dialect == "sqlite" else func.floor(scaled)  # SQLite truncates
    rows = conn.execute(select(bucket, bin_, func.count(), func.sum(c.confidence))
                        .where(*window).group_by(bucket, bin_)).all()
    per_bucket: dict[int, list] = {}
    starts: dict = {}  # bucket key -> start, parsed once per bucket (not once per bin)
    for key, b, n, total in rows:
        start = starts[key] if key in starts else starts.setdefault(key, _bucket_start(key, dialect, size))
        per_bucket.setdefault(start, []).append(
            (min(int(b), CONFIDENCE_BINS - 1), int(n), float(total)))  # confidence 1.0: the last bin
    out = {}
    for start, bins in per_bucket.items():
        n = sum(k for _, k, _ in bins)
        counts = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        for b, k, _ in bins:
            counts[b] += k
        out[start] = (n, sum(t for *_, t in bins) / n, _percentile_of_bins(counts, CONFIDENCE_LOW_PERCENTILE))
    return out


def _time_bucket(column, dialect: str, size: int):
    """The hour or UTC day of a stored time, as SQL. SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff'
    text, so a prefix is the bucket (no date parsing per row); PostgreSQL truncates its timestamp."""
    hourly = size == 3600
    if dialect == "sqlite":
        return func.substr(column, 1, 13 if hourly else 10)
    if dialect == "postgresql":
        return func.date_trunc("hour" if hourly else "day", column)
    epoch = extract("epoch", column)  # other databases, where SQLAlchemy compiles it
    return epoch - epoch % size


def _bucket_start(key, dialect: str, size: int) -> int:
    """A bucket key back to its start in epoch seconds."""
    if dialect == "sqlite":  # 'YYYY-MM-DD HH' or 'YYYY-MM-DD' (fromisoformat: C, unlike strptime)
        return int(datetime.fromisoformat(key).replace(tzinfo=UTC).timestamp())
    if isinstance(key, datetime):
        return int(as_utc(key).timestamp())
    return int(key)


def _percentile_of_bins(counts: np.ndarray, q: float) -> float:
    """The q-th percentile (numpy's linear method) of values counted on equal bins of [0, 1]:
    the two order statistics around rank q * (n - 1) are each placed inside their bin (values
    taken as evenly spread in it, so each is off by less than a bin width), then interpolated
    as numpy does: the result is within one bin width of numpy's."""
    n = int(counts.sum())
    pos = (n - 1) * q / 100
    lo = math.floor(pos)
    cumulative = np.cumsum(counts)

    def order_statistic(k: int) -> float:
        b = int(np.searchsorted(cumulative, k, side="right"))  # the bin holding the k-th value
        before = cumulative[b - 1] if b else 0
        return float((b + (k - before + 0.5) / counts[b]) / len(counts))

    return _lerp([order_statistic(k) for k in (lo, lo + 1) if k < n], pos - lo)


def _lerp(values: list[float], t: float) -> float:
    """numpy's interpolation between two order statistics (np.percentile, method 'linear'),
    written as numpy writes it so the figures match it to the last bit."""
    a = float(values[0])
    if len(values) < 2 or t == 0:
        return a
    b = float(values[1])
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _review_queue(conn, window: list, limit: int) -> list[dict]:
    """The lowest-confidence predictions, by the confidence index."""
    c = predictions.c
    stmt = (select(c.id, c.time, c.model_version, c.sha256, c.label, c.confidence, c.ood_score,
                   c.image.is_not(None).label("has_image"))
            .where(*window).order_by(c.confidence, c.id).limit(max(0, limit)))
    return [dict(r) | {"time": as_utc(r["time"]).isoformat(), "has_image": bool(r["has_image"])}
            for r in conn.execute(stmt).mappings().all()]


# ----------------------------------------------------------------------------- the report


def _empty_report(folder: Path | None, version: str, shown_url: str, start: datetime | None,
                  now: datetime) -> dict:
    report = {} if folder is None else {"model_dir": str(folder)}
    return report | {
        "model_version": version, "db": shown_url,
        "generated_at": now.isoformat(),
        "window": {"start": start.isoformat() if start else None, "end": now.isoformat()},
        "total_predictions": 0, "current_version_predictions": 0, "versions": {},
        "volume": {"bucket": "hour", "buckets": []},
        "latency_ms": None, "confidence": None, "drift": None,
        "unknown_rate": None, "flags": [], "review_queue": [], "notes": [],
        "thresholds": {"psi_moderate": PSI_MODERATE, "psi_significant": PSI_SIGNIFICANT,
                       "p_value": P_VALUE_ALPHA, "min_predictions": MIN_DRIFT_PREDICTIONS,
                       "unknown_excess": UNKNOWN_EXCESS},
    }


def _fill(report: dict, agg: _Aggregates, config: dict, version: str,
          start: datetime | None, now: datetime) -> dict:
    notes = report["notes"]
    n = agg.total
    report["total_predictions"] = n
    if n == 0:
        notes.append("no predictions in this window" if start else "no predictions logged yet")
        report["drift"] = _drift_or_none(config, {}, notes)
        return report
    # Without --since the window is the logged span; with it, from `since` until now.
    first = start or agg.first
    last = now if start else agg.last
    report["window"] = {"start": first.isoformat(), "end": last.isoformat()}
    report["current_version_predictions"] = agg.versions.get(version, 0)
    report["versions"] = agg.versions
    if version not in agg.versions:
        notes.append(f"no predictions from this bundle (version {version}) in the window; drift and "
                     "the confidence histogram need them (the log has versions "
                     f"{', '.join(report['versions'])})")
    # A row stamped after `now` (another worker's clock) still gets a bucket.
    report["volume"], over_time = _time_buckets(agg, first, max(last, agg.last))
    report["latency_ms"] = agg.latency
    report["confidence"] = _confidence(agg.confidence_mean, agg.live_counts, config, over_time)
    # A multi-label model never answers 'unknown' (it has no open-set check; a class may even be
    # called that), so its rate says nothing.
    report["unknown_rate"] = None if _multilabel(config) else agg.unknown / n
    report["drift"] = _drift_or_none(config, agg.labels, notes, agg.live_counts)
    report["flags"] = list(report["drift"]["flags"]) if report["drift"] else []
    unknown_flag = _unknown_flag(agg.labels, config)
    if unknown_flag:
        report["flags"].append(unknown_flag)
    report["review_queue"] = agg.queue
    return report


def _time_buckets(agg: _Aggregates, first: datetime, last: datetime) -> tuple[dict, list[dict]]:
    """Predictions per hour (spans up to 48 h) or per UTC day, empty buckets included so a
    chart shows outages; and the confidence mean and 10th percentile per bucket."""
    size = agg.bucket_size
    origin = math.floor(first.timestamp() / size) * size  # bucket edges on whole hours / days
    n_buckets = int((last.timestamp() - origin) // size) + 1
    volume, over_time = [], []
    for b in range(n_buckets):
        start = origin + b * size
        t = datetime.fromtimestamp(start, UTC).isoformat()
        count, mean, p10 = agg.buckets.get(start, (0, None, None))
        volume.append({"start": t, "count": count})
        over_time.append({"start": t, "count": count, "mean": mean, "p10": p10})
    return {"bucket": "hour" if size == 3600 else "day", "buckets": volume}, over_time


def _confidence_edges(config: dict) -> np.ndarray:
    hist = (config.get("baseline") or {}).get("confidence_histogram") or {}
    return np.asarray(hist.get("edges") or np.linspace(0.0, 1.0, 11), dtype=np.float64)


def _confidence(mean: float, live: np.ndarray, config: dict, over_time: list) -> dict:
    """Histogram of this bundle's live top-1 confidence on the baseline's bins, next to the
    baseline's; mean and 10th percentile over time (all versions)."""
    hist = (config.get("baseline") or {}).get("confidence_histogram") or {}
    base = hist.get("counts")
    return {
        "mean": mean,
        "edges": _confidence_edges(config).tolist(),
        "live_counts": live.tolist(),
        "live_shares": _shares(live).tolist() if live.sum() else None,
        "baseline_counts": list(base) if base else None,
        "baseline_shares": _shares(np.asarray(base, dtype=np.float64)).tolist() if base else None,
        "over_time": over_time,
    }


# ----------------------------------------------------------------------------- drift


def _multilabel(config: dict) -> bool:
    return config.get("task") == "multilabel"


def _drift_or_none(config: dict, labels: dict[str, int], notes: list[str],
                   live_confidence_counts: np.ndarray | None = None) -> dict | None:
    """Class drift of this bundle's answers, `labels` being their counts per label."""
    if _multilabel(config):
        return _label_drift_or_none(config, labels, notes, live_confidence_counts)
    baseline = config.get("baseline") or {}
    class_names = list(config.get("class_names") or [])
    shares = baseline.get("class_distribution")
    if not shares:
        notes.append("the bundle has no validation baseline (trained by an older clarivis, or too few "
                     "validation images to calibrate), so class drift is not measured; retrain to fit one")
        return None
    if len(shares) != len(class_names):
        notes.append(f"the bundle's baseline has {len(shares)} classes but the model {len(class_names)}; "
                     "class drift is not measured; retrain to refit the baseline")
        return None
    if not labels:
        return None  # the empty-log note says why
    counts = np.array([labels.get(name, 0) for name in class_names], dtype=np.int64)
    other = sorted(lbl for lbl in labels if lbl not in class_names and lbl != UNKNOWN_LABEL)
    if other:
        notes.append(f"labels not in the bundle's classes are left out of drift: {', '.join(other[:5])}")
    if not counts.sum():
        notes.append("every prediction of this bundle in the window is 'unknown'; no class drift to measure")
        return None
    return class_drift(counts, np.asarray(shares, dtype=np.float64), class_names, live_confidence_counts,
                       baseline)


def _label_drift_or_none(config: dict, sets: dict[str, int], notes: list[str],
                         live_confidence_counts: np.ndarray | None) -> dict | None:
    """A multi-label bundle's drift, `sets` being its answers counted per label set."""
    baseline = config.get("baseline") or {}
    class_names = list(config.get("class_names") or [])
    rates = baseline.get("label_rates")
    if not rates:
        notes.append("the bundle has no validation baseline of label rates (trained by an older clarivis, "
                     "or too few validation images), so label drift is not measured; retrain to fit one")
        return None
    if len(rates) != len(class_names):
        notes.append(f"the bundle's baseline has {len(rates)} labels but the model {len(class_names)}; "
                     "label drift is not measured; retrain to refit the baseline")
        return None
    if not sets:
        return None  # the empty-log note says why
    counts, images, other = label_counts(sets, class_names)
    if other:
        notes.append(f"labels not in the bundle's classes are left out of drift: {', '.join(other[:5])}")
    return label_drift(counts, images, np.asarray(rates, dtype=np.float64), class_names,
                       live_confidence_counts, baseline, no_label=sets.get("", 0))


def label_counts(sets: dict[str, int], class_names: list[str]) -> tuple[np.ndarray, int, list[str]]:
    """{label set (names joined by LABEL_SEP, "" for none): images} -> (images holding each
    class, images in all, names that are no class of the bundle, sorted)."""
    index = {name: i for i, name in enumerate(class_names)}
    counts = np.zeros(len(class_names), dtype=np.int64)
    other: set[str] = set()
    for joined, n in sets.items():
        for name in set(split_label_set(joined, index)):
            if name in index:
                counts[index[name]] += n
            else:
                other.add(name)
    return counts, int(sum(sets.values())), sorted(other)


def split_label_set(joined: str, class_names) -> list[str]:
    """A logged label set (names joined by LABEL_SEP, "" for none) -> its names. A class name
    may itself hold LABEL_SEP (a manifest read with another --label-sep), so the longest run of
    parts that is a class name is taken first; a part that is none is returned alone."""
    parts = joined.split(LABEL_SEP) if joined else []
    names, i = [], 0
    while i < len(parts):
        longer = (j for j in range(len(parts), i + 1, -1) if LABEL_SEP.join(parts[i:j]) in class_names)
        j = next(longer, i + 1)
        names.append(LABEL_SEP.join(parts[i:j]))
        i = j
    return names


def label_drift(counts: np.ndarray, images: int, baseline_rates: np.ndarray, class_names: list[str],
                live_confidence_counts: np.ndarray | None = None, baseline: dict | None = None, *,
                no_label: int = 0) -> dict:
    """Each label's live rate (counts / images) against its validation rate (a two-sided
    binomial test each), the share of images with no label (`no_label`: their number), PSI of
    the labels' shares of all predicted labels against the baseline's class_distribution, KS
    of the highest probability, and the flags."""
    baseline = baseline or {}
    live_rates = counts / images
    base_shares = np.asarray(baseline.get("class_distribution") or _shares_or_zero(baseline_rates),
                             dtype=np.float64)
    assigned = int(counts.sum())  # labels predicted in all (an image may hold several, or none)
    tests = []
    for name, k, live, base in zip(class_names, counts.tolist(), live_rates, baseline_rates, strict=True):
        p = stats.binomtest(int(k), images, float(np.clip(base, 1e-9, 1 - 1e-9))).pvalue
        tests.append({"label": name, "count": int(k), "live_rate": float(live), "baseline_rate": float(base),
                      "p_value": float(p)})
    drift = {
        "task": "multilabel",
        "num_predictions": images,
        "classes": class_names,
        "live_rates": live_rates.tolist(),
        "baseline_rates": baseline_rates.tolist(),
        "no_label_rate": no_label / images,  # images whose set is empty
        "label_tests": tests,
        "live_shares": _shares(counts).tolist() if assigned else None,
        "baseline_shares": base_shares.tolist(),
        "psi": psi(_shares(counts), base_shares) if assigned else None,
        "psi_noise_floor": (len(class_names) - 1) / assigned if assigned else None,
        "chi_square": None,  # the labels of a set are not one draw each: see label_tests instead
        "ks": _ks(live_confidence_counts, baseline),
        "flags": [],
    }
    if images >= MIN_DRIFT_PREDICTIONS:
        drift["flags"] = _drift_flags(drift) + _label_rate_flags(tests, len(class_names))
    return drift


def _label_rate_flags(tests: list[dict], num_classes: int) -> list[dict]:
    alpha = P_VALUE_ALPHA / max(1, num_classes)
    flags = []
    for t in tests:
        change = t["live_rate"] - t["baseline_rate"]
        if abs(change) > LABEL_RATE_CHANGE and t["p_value"] < alpha:
            flags.append(_flag("label_rate", t["live_rate"], t["baseline_rate"], "significant",
                               f"label '{t['label']}' is predicted in {100 * t['live_rate']:.1f}% of images "
                               f"(validation: {100 * t['baseline_rate']:.1f}%; binomial p = "
                               f"{t['p_value']:.2g} < {alpha:.2g}); check what traffic the model now sees"))
    return flags


def _shares_or_zero(values: np.ndarray) -> np.ndarray:
    total = float(np.sum(values))
    return np.asarray(values, dtype=np.float64) / total if total > 0 else np.zeros(len(values))


def class_drift(counts: np.ndarray, baseline_shares: np.ndarray, class_names: list[str],
                live_confidence_counts: np.ndarray | None = None, baseline: dict | None = None) -> dict:
    """PSI and chi-square of predicted-class counts against baseline shares, KS of confidence
    (counted on the baseline histogram's bins) against the baseline histogram, and the flags."""
    n = int(counts.sum())
    live = _shares(counts)
    expected = _smoothed(baseline_shares)
    value = psi(live, baseline_shares)
    # Expected counts from the smoothed shares sum to n, as chisquare requires; a class never
    # predicted on validation gets a tiny expectation, so predicting it now is a large term.
    chi = stats.chisquare(counts.astype(np.float64), expected * n)
    drift = {
        "num_predictions": n,
        "classes": class_names,
        "live_shares": live.tolist(),
        "baseline_shares": [float(s) for s in baseline_shares],
        "psi": value,
        # PSI ≈ chi-square statistic / n, whose mean under no drift is (classes - 1) / n: a PSI
        # near this floor is sampling noise, whatever the thresholds say.
        "psi_noise_floor": (len(class_names) - 1) / n,
        "chi_square": {"statistic": float(chi.statistic), "p_value": float(chi.pvalue),
                       "dof": len(class_names) - 1},
        "ks": _ks(live_confidence_counts, baseline or {}),
        "flags": [],
    }
    if n >= MIN_DRIFT_PREDICTIONS:
        drift["flags"] = _drift_flags(drift)
    return drift


def psi(live_shares: np.ndarray, baseline_shares: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Population Stability Index: sum over classes of (live - base) * ln(live / base)."""
    a, e = _smoothed(live_shares, eps), _smoothed(baseline_shares, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def _ks(live_counts: np.ndarray | None, baseline: dict) -> dict | None:
    """Kolmogorov-Smirnov of live confidence against the baseline histogram.

    The baseline keeps only bin counts, so both CDFs are compared at the bin edges, where the
    baseline's is exact. Interpolating inside bins would invent a shape (calibrated confidences
    pile up just below 1.0, not evenly across 0.9-1.0) and raise false alarms; comparing at edges
    can only under-state D, so the test errs towards silence. The baseline is itself a sample of
    m validation images, so the p-value is the two-sample one: Kolmogorov's distribution at the
    effective size n*m/(n+m), as scipy's ks_2samp uses (n alone would overstate significance).
    `live_counts`: the live confidences counted on the baseline's bins.
    """
    hist = baseline.get("confidence_histogram") or {}
    if live_counts is None or live_counts.sum() == 0 or not hist.get("counts"):
        return None
    base_counts = np.asarray(hist["counts"], dtype=np.float64)
    if base_counts.sum() <= 0 or len(base_counts) != len(live_counts):
        return None
    base_cdf = np.concatenate([[0.0], np.cumsum(base_counts) / base_counts.sum()])
    live_cdf = np.concatenate([[0.0], np.cumsum(live_counts) / live_counts.sum()])
    statistic = float(np.max(np.abs(live_cdf - base_cdf)))
    n = int(live_counts.sum())
    m = int(baseline.get("num_images") or base_counts.sum())
    n_eff = max(1, round(n * m / (n + m)))
    return {"statistic": statistic, "p_value": float(stats.kstwo.sf(statistic, n_eff)),
            "effective_n": n_eff, "method": "two-sample KS at the baseline's bin edges"}


def _drift_flags(drift: dict) -> list[dict]:
    flags = []
    value = drift["psi"]
    if value is None:  # a multi-label model predicted no label at all
        pass
    elif value > PSI_SIGNIFICANT:
        flags.append(_flag("psi", value, PSI_SIGNIFICANT, "significant",
                           f"predicted-class shares shifted: PSI {value:.3f} > {PSI_SIGNIFICANT} "
                           "(significant shift; check what traffic the model now sees)"))
    elif value > PSI_MODERATE:
        flags.append(_flag("psi", value, PSI_MODERATE, "moderate",
                           f"predicted-class shares moved: PSI {value:.3f} in "
                           f"{PSI_MODERATE}-{PSI_SIGNIFICANT} (moderate shift; keep watching)"))
    p = drift["chi_square"]["p_value"] if drift["chi_square"] else 1.0
    if p < P_VALUE_ALPHA:
        flags.append(_flag("chi_square", p, P_VALUE_ALPHA, "significant",
                           f"class counts differ from validation: chi-square p = {p:.2g} < {P_VALUE_ALPHA}"))
    ks = drift["ks"]
    if ks and ks["p_value"] < P_VALUE_ALPHA:
        flags.append(_flag("ks", ks["p_value"], P_VALUE_ALPHA, "significant",
                           f"confidence distribution differs from validation: KS D = {ks['statistic']:.3f}, "
                           f"p = {ks['p_value']:.2g} < {P_VALUE_ALPHA}"))
    return flags


def _unknown_flag(labels: dict[str, int], config: dict) -> dict | None:
    """`labels`: this bundle's answers counted per label."""
    ood = config.get("ood") or {}
    n = sum(labels.values())
    if not n or "accept_rate" not in ood or n < MIN_DRIFT_PREDICTIONS:
        return None
    expected = 1.0 - float(ood["accept_rate"])  # known validation images rejected
    k = labels.get(UNKNOWN_LABEL, 0)
    rate = k / n
    p = stats.binomtest(k, n, min(max(expected, 1e-9), 1.0), alternative="greater").pvalue
    if rate - expected > UNKNOWN_EXCESS and p < P_VALUE_ALPHA:
        return _flag("unknown_rate", rate, expected + UNKNOWN_EXCESS, "significant",
                     f"{100 * rate:.1f}% of predictions are 'unknown' (validation: {100 * expected:.1f}%); "
                     "traffic holds images unlike the training classes: review them, add a class or retrain")
    return None


def _flag(check: str, value: float, threshold: float, level: str, message: str) -> dict:
    return {"check": check, "value": float(value), "threshold": threshold, "level": level, "message": message}


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum()


def _smoothed(shares, eps: float = PSI_EPSILON) -> np.ndarray:
    s = np.maximum(np.asarray(shares, dtype=np.float64), eps)
    return s / s.sum()
