"""/v1/search: the nearest images of a collection indexed with `clarivis index`, to uploaded
images (POST, the same upload rules as /v1/predict) or to words (GET ?text=, a CLIP index), and
/v1/search/image/{id}: a result's thumbnail. Only on a service started with --index; paths in
answers are relative to the collection's root (no answer names a server path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clarivis.data.thumbnails import thumbnail as image_thumbnail
from clarivis.errors import ClarivisError
from clarivis.extras import needs
from clarivis.serve.api_v1 import PREDICT_BODY, deadline
from clarivis.serve.schemas import SearchResponse, errors
from clarivis.serve.uploads import read_uploads

with needs("serve", "clarivis serve"):
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from clarivis.serve.service import Service

THUMBNAIL_PX = 256  # longest side of a result's thumbnail: a results grid, not the photo
NO_INDEX = "this server has no index; start it with --index INDEX (built by clarivis index)"


def add_search_routes(app: FastAPI, service: Service) -> None:
    k_param = Query(10, ge=1, le=1000, description="results per query")
    where_param = Query(None, description="COLUMN=VALUE, repeat for more: only images whose "
                                          "metadata matches all")

    @app.post("/v1/search", openapi_extra=PREDICT_BODY, tags=["search"], response_model=SearchResponse,
              responses=errors(400, 401, 404, 413, 415, 422, 504))
    async def search_images(request: Request, k: int = k_param,
                            where: list[str] | None = where_param) -> dict:
        """The k indexed images most like each uploaded image (cosine similarity of embeddings)."""
        searcher = _searcher(service)
        filters = _where(where)
        async with deadline(service.settings.timeout_s):
            img_size = searcher.encoder.config.preprocess.img_size
            uploads = await read_uploads(request, service.settings, img_size)
            names = [u.filename or f"<image {i}>" for i, u in enumerate(uploads)]
            results = await run_in_threadpool(_run, searcher.images, [u.image for u in uploads], names,
                                              k=k, where=filters)
        return _response(service, results)

    @app.get("/v1/search", tags=["search"], response_model=SearchResponse,
             responses=errors(400, 401, 404, 422, 504))
    async def search_text(text: str = Query(..., min_length=1, max_length=1000,
                                            description="words, e.g. 'a dog chasing a ball' (a CLIP index)"),
                          k: int = k_param, where: list[str] | None = where_param) -> dict:
        """The k indexed images closest to the words (needs an index built with a CLIP model)."""
        searcher = _searcher(service)
        filters = _where(where)
        async with deadline(service.settings.timeout_s):
            results = await run_in_threadpool(_run, searcher.text, [text], k=k, where=filters)
        return _response(service, results)

    @app.get("/v1/search/image/{image_id}", tags=["search"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, **errors(401, 404, 422)})
    async def thumbnail(image_id: int) -> Response:
        """A JPEG thumbnail of indexed image `image_id` (a search result's `id`)."""
        path = _searcher(service).image_path(image_id)
        if path is None:
            raise HTTPException(404, f"no indexed image {image_id}; take ids from /v1/search")
        try:
            data = await run_in_threadpool(image_thumbnail, path, THUMBNAIL_PX, "JPEG")
        except OSError:
            data = None
        if data is None:
            raise HTTPException(404, f"indexed image {image_id} can no longer be read; "
                                     "run clarivis index again to update the index")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def _searcher(service: Service):
    if service.searcher is None:
        raise HTTPException(404, NO_INDEX)
    return service.searcher


def _where(pairs: list[str] | None) -> dict[str, str]:
    from clarivis.index.query import parse_where  # torch: loaded already by a service with an index

    try:
        return parse_where(pairs)
    except ClarivisError as err:
        raise HTTPException(422, str(err)) from None


def _run(fn, *args, **kwargs):
    """A search in the thread pool; a user error (unknown column, text on an image index) is a 400."""
    try:
        return fn(*args, **kwargs)
    except ClarivisError as err:
        raise HTTPException(400, str(err).replace("--text", "text").replace("--where", "where")) from None


def _response(service: Service, results) -> dict:
    searcher = service.searcher
    return {"index_size": len(searcher), "queries": [
        {"query": r.query, "results": [{"id": h.key, "path": searcher.relative(h.path), "score": h.score,
                                        "metadata": h.metadata} for h in r.results]} for r in results]}
