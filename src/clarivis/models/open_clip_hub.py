"""CLIP weights from open_clip's hub: the Hugging Face cache first (no network), then a download
through open_clip; offline, a one-line error within seconds instead of huggingface_hub's minute
of retries and warnings. Reached only through models/open_clip.py, which checked that the
optional open_clip package is installed."""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub

from clarivis.errors import ModelError

PROBE_TIMEOUT_S = 3.0  # a reachable hub answers a TCP connect well within this
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_weights(name: str, tag: str, cfg: dict) -> Path:
    """The local path of open_clip's weights `tag` for model `name` (`cfg`: the tag's
    pretrained config), from the cache or downloaded."""
    import open_clip  # optional heavy dependency: CLIP models only (see models/open_clip.py)

    cached = _cached(cfg)
    if cached is not None:
        return cached
    if cfg.get("hf_hub") and _hub_unreachable():
        raise ModelError(f"open_clip weights '{name}' ({tag}) are not cached and the hub cannot be "
                         "reached; download the checkpoint once and pass it with --clip-weights FILE")
    try:
        with _quiet_hub():
            path = open_clip.download_pretrained(cfg)
    except Exception as err:  # noqa: BLE001 - network, hub and cache errors of every kind
        raise ModelError(f"could not download open_clip weights '{name}' ({tag}): "
                         f"{type(err).__name__}; offline, download the checkpoint once and pass it "
                         "with --clip-weights FILE") from None
    if not path:
        raise ModelError(f"open_clip lists no download for '{name}' ({tag}); pass --clip-weights FILE")
    return Path(path)


def _cached(cfg: dict) -> Path | None:
    """The file open_clip would download, if the Hugging Face cache already holds it."""
    if cfg.get("file"):
        return Path(cfg["file"])
    if not cfg.get("hf_hub"):
        return None
    repo, filename = _split_hub(cfg["hf_hub"])
    for candidate in _candidates(filename):
        found = huggingface_hub.try_to_load_from_cache(repo, candidate)
        if isinstance(found, str):
            return Path(found)
    return None


def _split_hub(spec: str) -> tuple[str, str]:
    """'org/repo/' -> ('org/repo', open_clip's default file); 'org/repo/file.pt' -> both parts
    (the convention of open_clip.download_pretrained)."""
    from open_clip.pretrained import HF_WEIGHTS_NAME  # optional heavy dependency: CLIP only

    repo, filename = os.path.split(spec)
    return repo, filename or HF_WEIGHTS_NAME


def _candidates(filename: str) -> list[str]:
    """The safetensors twin first, as open_clip prefers it."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME  # optional: CLIP only

    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _hub_unreachable() -> bool:
    """True when the hub surely cannot be reached: no proxy is configured (a proxy may reach
    what a direct connection cannot) and a TCP connection fails within PROBE_TIMEOUT_S."""
    if any(os.environ.get(v) for v in _PROXY_VARS) or os.environ.get("HF_HUB_OFFLINE"):
        return False  # HF_HUB_OFFLINE: huggingface_hub itself fails at once
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), PROBE_TIMEOUT_S).close()
    except OSError:
        return True
    return False


@contextmanager
def _quiet_hub():
    """huggingface_hub logs every retry as a warning; the outcome is reported as one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
