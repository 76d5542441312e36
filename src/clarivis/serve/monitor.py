"""The drift monitor: what served traffic looked like (volume, latency, confidence) and whether
the predicted classes still look like they did on validation (the baseline in the bundle).

Torch-free, like the prediction log: the service may call it from a process without torch.
"""

from __future__ import annotations

import csv
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.fileio import atomic_write
from clarivis.prediction import UNKNOWN_LABEL
from clarivis.serve.predlog import PredictionLog, as_utc, default_db_url, predictions, safe_url, to_naive_utc
from clarivis.spec import bundle_version, read_bundle_config, resolve_bundle_path

with needs("serve", "clarivis monitor"):
    from scipy import stats
    from sqlalchemy import select
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

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
# Up to this span the time buckets are hours (at most 48 of them), beyond it days.
HOURLY_SPAN = timedelta(hours=48)

REVIEW_COLUMNS = ["id", "time", "model_version", "sha256", "label", "confidence", "ood_score", "has_image"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | datetime | None, now: datetime | None = None) -> datetime | None:
    """'24h', '30m', '7d', '2w' (before now) or an ISO date/time ('2024-05-01', '2024-05-01T12:00Z';
    without a zone it is UTC) -> an aware UTC datetime. None stays None."""
    if value is None or isinstance(value, datetime):
        return None if value is None else as_utc(value)
    now = as_utc(now) if now is not None else datetime.now(UTC)
    match = _DURATION.match(value)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()])
    try:
        return as_utc(datetime.fromisoformat(value.strip()))
    except ValueError:
        raise ClarivisError(f"--since '{value}' is not a time; use a duration before now like 24h, 7d "
                            "or 30m, or an ISO date/time like 2024-05-01 or 2024-05-01T12:00Z") from None


def bundle_info(model_dir: str | Path) -> tuple[Path, dict, str]:
    """(bundle folder, config.json as a dict, model version) without importing torch."""
    folder = resolve_bundle_path(model_dir)
    return folder, read_bundle_config(folder).to_dict(), bundle_version(folder)


def monitor_report(model_dir: str | Path, db_url: str | None = None, since: str | datetime | None = None,
                   *, review_limit: int = 100, now: datetime | None = None) -> dict:
    """Volume, latency, confidence, class drift against the bundle's validation baseline, and the
    lowest-confidence predictions to relabel. Drift uses only predictions of this bundle's version
    (the baseline describes this model); the other sections cover every version in the window."""
    folder, config, version = bundle_info(model_dir)
    now = as_utc(now) if now is not None else datetime.now(UTC)
    start = parse_since(since, now)
    url = db_url or default_db_url(folder)
    report = _empty_report(folder, version, url, start, now)
    if _missing_sqlite_file(url):
        report["notes"].append(f"no prediction log at {safe_url(url)} yet; serve the model to start one")
        report["drift"] = _drift_or_none(config, [], report["notes"])
        return report
    with PredictionLog(url) as log:
        rows = _load(log, start)
        queue = _review_queue(log, start, review_limit) if rows["time"].size else []
    return _fill(report, rows, queue, config, version, start, now)


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
        return False  # PredictionLog turns it into a ClarivisError with an example
    database = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and \
        not Path(database).expanduser().is_file()


def _load(log: PredictionLog, start: datetime | None) -> dict[str, np.ndarray]:
    """The columns the report needs, oldest first; times as seconds since the epoch (UTC)."""
    c = predictions.c
    stmt = select(c.time, c.model_version, c.label, c.confidence, c.latency_ms).order_by(c.time, c.id)
    if start is not None:
        stmt = stmt.where(c.time >= to_naive_utc(start))
    with log.engine.connect() as conn:
        result = conn.execute(stmt).all()
    return {
        "time": np.array([as_utc(r[0]).timestamp() for r in result], dtype=np.float64),
        "version": np.array([r[1] for r in result], dtype=object),
        "label": np.array([r[2] for r in result], dtype=object),
        "confidence": np.array([r[3] for r in result], dtype=np.float64),
        "latency": np.array([r[4] for r in result], dtype=np.float64),
    }


def _review_queue(log: PredictionLog, start: datetime | None, limit: int) -> list[dict]:
    c = predictions.c
    stmt = (select(c.id, c.time, c.model_version, c.sha256, c.label, c.confidence, c.ood_score,
                   c.image.is_not(None).label("has_image"))
            .order_by(c.confidence, c.id).limit(max(0, limit)))
    if start is not None:
        stmt = stmt.where(c.time >= to_naive_utc(start))
    with log.engine.connect() as conn:
        result = conn.execute(stmt).mappings().all()
    return [dict(r) | {"time": as_utc(r["time"]).isoformat(), "has_image": bool(r["has_image"])}
            for r in result]


# ----------------------------------------------------------------------------- the report


def _empty_report(folder: Path, version: str, url: str, start: datetime | None, now: datetime) -> dict:
    return {
        "model_dir": str(folder), "model_version": version, "db": safe_url(url),
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


def _fill(report: dict, rows: dict, queue: list[dict], config: dict, version: str,
          start: datetime | None, now: datetime) -> dict:
    notes = report["notes"]
    n = int(rows["time"].size)
    report["total_predictions"] = n
    if n == 0:
        notes.append("no predictions in this window" if start else "no predictions logged yet")
        report["drift"] = _drift_or_none(config, [], notes)
        return report
    # Without --since the window is the logged span; with it, from `since` until now.
    first = start or datetime.fromtimestamp(rows["time"][0], UTC)
    last = now if start else datetime.fromtimestamp(rows["time"][-1], UTC)
    report["window"] = {"start": first.isoformat(), "end": last.isoformat()}
    current = rows["version"] == version
    report["current_version_predictions"] = int(current.sum())
    versions, counts = np.unique(rows["version"].astype(str), return_counts=True)
    report["versions"] = {v: int(k) for v, k in zip(versions, counts, strict=True)}
    if not current.any():
        notes.append(f"no predictions from this bundle (version {version}) in the window; drift and "
                     "the confidence histogram need them (the log has versions "
                     f"{', '.join(report['versions'])})")
    report["volume"], over_time = _time_buckets(rows, first, last)
    lat = rows["latency"]
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    report["latency_ms"] = {"p50": float(p50), "p95": float(p95), "p99": float(p99),
                            "mean": float(lat.mean()), "max": float(lat.max())}
    report["confidence"] = _confidence(rows["confidence"], rows["confidence"][current], config, over_time)
    report["unknown_rate"] = float(np.mean(rows["label"] == UNKNOWN_LABEL))
    labels = list(rows["label"][current])
    report["drift"] = _drift_or_none(config, labels, notes, rows["confidence"][current])
    report["flags"] = list(report["drift"]["flags"]) if report["drift"] else []
    unknown_flag = _unknown_flag(labels, config)
    if unknown_flag:
        report["flags"].append(unknown_flag)
    report["review_queue"] = queue
    return report


def _time_buckets(rows: dict, first: datetime, last: datetime) -> tuple[dict, list[dict]]:
    """Predictions per hour (spans up to 48 h) or per UTC day, empty buckets included so a
    chart shows outages; and the confidence mean and 10th percentile per bucket."""
    hourly = last - first <= HOURLY_SPAN
    size = 3600 if hourly else 86400
    origin = math.floor(first.timestamp() / size) * size  # bucket edges on whole hours / days
    n_buckets = int((last.timestamp() - origin) // size) + 1
    index = np.clip(((rows["time"] - origin) // size).astype(np.int64), 0, n_buckets - 1)
    # Rows come oldest first, so each bucket is one slice: O(n), not O(n x buckets).
    bounds = np.searchsorted(index, np.arange(n_buckets + 1))
    volume, over_time = [], []
    for b in range(n_buckets):
        t = datetime.fromtimestamp(origin + b * size, UTC).isoformat()
        conf = rows["confidence"][bounds[b]:bounds[b + 1]]
        volume.append({"start": t, "count": int(conf.size)})
        over_time.append({"start": t, "count": int(conf.size),
                          "mean": float(conf.mean()) if conf.size else None,
                          "p10": float(np.percentile(conf, 10)) if conf.size else None})
    return {"bucket": "hour" if hourly else "day", "buckets": volume}, over_time


def _confidence(all_conf: np.ndarray, current_conf: np.ndarray, config: dict, over_time: list) -> dict:
    """Histogram of this bundle's live top-1 confidence on the baseline's bins, next to the
    baseline's; mean and 10th percentile over time (all versions)."""
    hist = (config.get("baseline") or {}).get("confidence_histogram") or {}
    edges = np.asarray(hist.get("edges") or np.linspace(0.0, 1.0, 11), dtype=np.float64)
    live = np.histogram(np.clip(current_conf, edges[0], edges[-1]), bins=edges)[0]
    base = hist.get("counts")
    return {
        "mean": float(all_conf.mean()),
        "edges": edges.tolist(),
        "live_counts": live.tolist(),
        "live_shares": _shares(live).tolist() if live.sum() else None,
        "baseline_counts": list(base) if base else None,
        "baseline_shares": _shares(np.asarray(base, dtype=np.float64)).tolist() if base else None,
        "over_time": over_time,
    }


# ----------------------------------------------------------------------------- drift


def _drift_or_none(config: dict, labels: list[str], notes: list[str],
                   confidence: np.ndarray | None = None) -> dict | None:
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
    index = {name: i for i, name in enumerate(class_names)}
    known = [index[lbl] for lbl in labels if lbl in index]
    other = sorted({lbl for lbl in labels if lbl not in index and lbl != UNKNOWN_LABEL})
    if other:
        notes.append(f"labels not in the bundle's classes are left out of drift: {', '.join(other[:5])}")
    if not known:
        notes.append("every prediction of this bundle in the window is 'unknown'; no class drift to measure")
        return None
    return class_drift(np.bincount(known, minlength=len(class_names)), np.asarray(shares, dtype=np.float64),
                       class_names, confidence, baseline)


def class_drift(counts: np.ndarray, baseline_shares: np.ndarray, class_names: list[str],
                confidence: np.ndarray | None = None, baseline: dict | None = None) -> dict:
    """PSI and chi-square of predicted-class counts against baseline shares, KS of confidence
    against the baseline histogram, and the flags they raise."""
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
        "ks": _ks(confidence, baseline or {}),
        "flags": [],
    }
    if n >= MIN_DRIFT_PREDICTIONS:
        drift["flags"] = _drift_flags(drift)
    return drift


def psi(live_shares: np.ndarray, baseline_shares: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Population Stability Index: sum over classes of (live - base) * ln(live / base)."""
    a, e = _smoothed(live_shares, eps), _smoothed(baseline_shares, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def _ks(confidence: np.ndarray | None, baseline: dict) -> dict | None:
    """Kolmogorov-Smirnov of live confidence against the baseline histogram.

    The baseline keeps only bin counts, so both CDFs are compared at the bin edges, where the
    baseline's is exact. Interpolating inside bins would invent a shape (calibrated confidences
    pile up just below 1.0, not evenly across 0.9-1.0) and raise false alarms; comparing at edges
    can only under-state D, so the test errs towards silence. The baseline is itself a sample of
    m validation images, so the p-value is the two-sample one: Kolmogorov's distribution at the
    effective size n*m/(n+m), as scipy's ks_2samp uses (n alone would overstate significance).
    """
    hist = baseline.get("confidence_histogram") or {}
    if confidence is None or confidence.size == 0 or not hist.get("counts"):
        return None
    edges = np.asarray(hist["edges"], dtype=np.float64)
    base_counts = np.asarray(hist["counts"], dtype=np.float64)
    if base_counts.sum() <= 0:
        return None
    base_cdf = np.concatenate([[0.0], np.cumsum(base_counts) / base_counts.sum()])
    live_counts = np.histogram(np.clip(confidence, edges[0], edges[-1]), bins=edges)[0]
    live_cdf = np.concatenate([[0.0], np.cumsum(live_counts) / live_counts.sum()])
    statistic = float(np.max(np.abs(live_cdf - base_cdf)))
    n = int(confidence.size)
    m = int(baseline.get("num_images") or base_counts.sum())
    n_eff = max(1, round(n * m / (n + m)))
    return {"statistic": statistic, "p_value": float(stats.kstwo.sf(statistic, n_eff)),
            "effective_n": n_eff, "method": "two-sample KS at the baseline's bin edges"}


def _drift_flags(drift: dict) -> list[dict]:
    flags = []
    value = drift["psi"]
    if value > PSI_SIGNIFICANT:
        flags.append(_flag("psi", value, PSI_SIGNIFICANT, "significant",
                           f"predicted-class shares shifted: PSI {value:.3f} > {PSI_SIGNIFICANT} "
                           "(significant shift; check what traffic the model now sees)"))
    elif value > PSI_MODERATE:
        flags.append(_flag("psi", value, PSI_MODERATE, "moderate",
                           f"predicted-class shares moved: PSI {value:.3f} in "
                           f"{PSI_MODERATE}-{PSI_SIGNIFICANT} (moderate shift; keep watching)"))
    p = drift["chi_square"]["p_value"]
    if p < P_VALUE_ALPHA:
        flags.append(_flag("chi_square", p, P_VALUE_ALPHA, "significant",
                           f"class counts differ from validation: chi-square p = {p:.2g} < {P_VALUE_ALPHA}"))
    ks = drift["ks"]
    if ks and ks["p_value"] < P_VALUE_ALPHA:
        flags.append(_flag("ks", ks["p_value"], P_VALUE_ALPHA, "significant",
                           f"confidence distribution differs from validation: KS D = {ks['statistic']:.3f}, "
                           f"p = {ks['p_value']:.2g} < {P_VALUE_ALPHA}"))
    return flags


def _unknown_flag(labels: list[str], config: dict) -> dict | None:
    ood = config.get("ood") or {}
    if not labels or "accept_rate" not in ood or len(labels) < MIN_DRIFT_PREDICTIONS:
        return None
    expected = 1.0 - float(ood["accept_rate"])  # known validation images rejected
    k = sum(lbl == UNKNOWN_LABEL for lbl in labels)
    rate = k / len(labels)
    p = stats.binomtest(k, len(labels), min(max(expected, 1e-9), 1.0), alternative="greater").pvalue
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
