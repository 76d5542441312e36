"""A real uvicorn server on a free loopback port, in a thread of the test process, and the image
bytes a client uploads."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn
from PIL import Image

from clarivis.serve.runner import uvicorn_options


@contextmanager
def running_server(app, **options) -> Iterator[str]:
    """Serve `app` until the block ends, with the options `clarivis serve` gives uvicorn
    (runner.uvicorn_options; `options` override its connection guard's limits); yields the base
    URL (http://127.0.0.1:PORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free one, and we hold it: no race
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options(**options))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def png_bytes(color=(220, 20, 20), size=(40, 30), fmt="PNG") -> bytes:
    rng = np.random.default_rng(sum(color) + size[0])
    arr = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format=fmt)
    return buffer.getvalue()


def logged(db: str, app=None) -> int:
    """Rows in the prediction log at `db`. The service journals a request's rows and a writer
    thread inserts them a moment later: with the serving `app`, its log is flushed first, so the
    count includes every request answered so far."""
    from clarivis.serve.predlog import PredictionLog

    if app is not None:
        assert app.state.service.log.flush(10), "the service's prediction log did not flush in 10 s"
    with PredictionLog(db) as log:
        return log.count()
