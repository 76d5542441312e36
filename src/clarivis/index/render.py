"""Search results as JSON (one object per query) and as a self-contained HTML page: each query
and its results as thumbnails carried inside the file (base64), with their scores."""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path

from clarivis.data.thumbnails import data_uri, thumbnail
from clarivis.index.query import QueryResult
from clarivis.spec import VERSION

THUMB = 128  # px, longest side: enough to judge a match at a glance

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} .q{margin:1.5em 0;padding-top:1em;border-top:1px solid #ddd}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;width:140px;font-size:12px;word-break:break-all}
figure img{width:128px;height:128px;object-fit:contain;background:#f4f4f4;display:block;border:1px solid #ccc}
.query img{border:3px solid #2a6fdb} .score{font-weight:600} .err{color:#b00}
.missing{width:128px;height:80px;background:#eee;display:flex;align-items:center;justify-content:center}
"""


def results_json(results: list[QueryResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=2)


def write_html(results: list[QueryResult], path: str | Path, *, index: str | Path, text: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(results_html(results, index=index, text=text), encoding="utf-8")
    return path


def results_html(results: list[QueryResult], *, index: str | Path, text: bool) -> str:
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>clarivis search</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Search of {html.escape(Path(index).name)}</h1>",
             f"<p>{len(results)} quer{'y' if len(results) == 1 else 'ies'}; clarivis {VERSION}, {when}</p>"]
    for r in results:
        parts.append("<section class='q'><div class='row'>")
        if text:
            parts.append(f"<figure class='query'><b>“{html.escape(r.query)}”</b></figure>")
        else:
            parts.append(_figure(r.query, "query", css="query"))
        if r.error:
            parts.append(f"<p class='err'>{html.escape(r.error)}</p>")
        for rank, hit in enumerate(r.results, 1):
            meta = "".join(f"<br>{html.escape(f'{c}={v}')}" for c, v in hit.metadata.items())
            parts.append(_figure(hit.path, f"#{rank} <span class='score'>{hit.score:.3f}</span>{meta}"))
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure(path: str, caption: str, *, css: str = "") -> str:
    data = thumbnail(path, THUMB, "JPEG")
    img = (f"<img src='{data_uri(data, 'image/jpeg')}' alt=''>" if data is not None
           else "<div class='missing'>unreadable</div>")
    name = html.escape(Path(path).name)
    return (f"<figure class='{css}' title='{html.escape(path)}'>{img}<figcaption>{caption}<br>"
            f"{name}</figcaption></figure>")
