"""The JSON API: routes over the shared `App`, one set of input limits, errors that never echo the input."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from compare.decide import Constraints
from core.limits import MAX_BODY_BYTES, MAX_LABEL_CHARS, MAX_NAME_CHARS, MAX_TEXTS, clip_message
from serving.access import Refused, bearer_token, client_of
from serving.inputs import InputError, hide_paths
from serving.state import App


class Body(BaseModel):
    """Every request body: strict (an unknown field, ``"300"`` or ``true`` for a number, are refused with 422, never
    ignored or converted), and numbers must be finite (NaN, Infinity and 1e999 are refused with 422, not a 500)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", strict=True)


Text = Annotated[str, Field(strict=False)]
"""A text: held to MAX_CHARS and to valid Unicode by `validate_texts`, whose 400 says which text is wrong and why
(strict mode would refuse a lone surrogate itself, with a vaguer 422)."""
Label = Annotated[str, Field(max_length=MAX_LABEL_CHARS)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
"""A backend's name, an option's value."""


class ClassifyBody(Body):
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS, description=f"1 to {MAX_TEXTS} texts")
    backends: list[Name] | None = Field(default=None, max_length=8, description="default: every loaded backend")


class CompareBody(Body):
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)
    labels: list[Label] | None = Field(default=None, max_length=MAX_TEXTS, description="references, to score")


class TeachBody(Body):
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)
    labels: list[Label] = Field(min_length=1, max_length=MAX_TEXTS)


class RecommendBody(Body):
    labeled_examples: int | None = Field(default=None, ge=1)
    accuracy_target: float | None = Field(default=None, gt=0, le=1)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    updates: Name = "rarely"
    hardware: Name = "cpu"
    need_evidence: bool = False


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes under one of `prefixes` gets 413 before it is read whole.

    Uploads (``/gradio_api/upload``) are left to Gradio's own ``max_file_size``.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body is counted as it
    arrives and refused as soon as it passes the limit.
    """

    def __init__(
        self,
        app: Any,
        limit: int = MAX_BODY_BYTES,
        prefixes: tuple[str, ...] = ("/api/", "/gradio_api/"),
        exempt: tuple[str, ...] = ("/gradio_api/upload",),
    ) -> None:
        self.app, self.limit, self.prefixes, self.exempt = app, limit, prefixes, exempt

    def _too_large(self) -> HTTPException:
        return HTTPException(status_code=413, detail=f"the request body is over the limit of {self.limit:,} bytes")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.prefixes) or path.startswith(self.exempt):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await error_response(413, self._too_large().detail)(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._too_large()  # FastAPI lets an HTTPException from reading the body through as it is
            return message

        return await self.app(scope, counted, send)


FRAME_ENV_VAR = "FTRAG_FRAME_ANCESTORS"
PAGE_HEADERS = {"/redoc": [(b"content-security-policy", b"img-src 'self' data:")]}
"""Headers of single pages. ReDoc's sidebar shows Redocly's logo from their CDN (no option turns it off): this policy
keeps the browser from fetching it, so /redoc works offline and tells no third party who reads the docs."""


class SecurityHeaders:
    """ASGI middleware: every response says ``X-Content-Type-Options: nosniff`` (a file is never run as another
    type) and ``Referrer-Policy: strict-origin-when-cross-origin`` (no page address leaks to other sites).

    Framing is allowed by default: Hugging Face Spaces shows the app in an iframe. With `frame_ancestors` (the
    operator's ``FTRAG_FRAME_ANCESTORS``, e.g. ``'self'`` or ``'none'``) only those sites may frame it
    (``Content-Security-Policy: frame-ancestors``, and ``X-Frame-Options`` for old browsers where it can say it).
    """

    def __init__(self, app: Any, frame_ancestors: str | None = None) -> None:
        self.app = app
        self.headers = [(b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"strict-origin-when-cross-origin")]  # fmt: skip
        if frame_ancestors:
            self.headers.append((b"content-security-policy", f"frame-ancestors {frame_ancestors}".encode()))
            old_browsers = {"'none'": b"DENY", "'self'": b"SAMEORIGIN"}.get(frame_ancestors.strip().lower())
            if old_browsers:
                self.headers.append((b"x-frame-options", old_browsers))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                ours = [*self.headers, *PAGE_HEADERS.get(scope.get("path", ""), [])]
                extra = [(name, value) for name, value in ours if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, with_headers)


def error_response(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error the API sends: ``{"error": message}``, the message without server paths and cut to
    MAX_ERROR_CHARS (a message may quote the input: a 2 MB option value once came back whole)."""
    return JSONResponse(status_code=status, content={"error": clip_message(hide_paths(str(message)))}, headers=headers)


def _validation_message(err: RequestValidationError) -> dict[str, Any]:
    """A 422 body that says what is wrong without echoing the input (which may be huge, or NaN that JSON lacks)."""
    details = [
        {"loc": [clip_message(str(part), 50) for part in e.get("loc", ())][:6],
         "msg": clip_message(str(e.get("msg", "")), 200)}
        for e in err.errors()[:10]
    ]  # fmt: skip
    text = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in details)
    return {"error": text or "the request body is not valid", "details": details}


def create_api(state: App) -> FastAPI:
    """The API routes, with the body limit, and error handlers that answer JSON and never echo the input.

    A screen long on purpose: it is the API's table of contents, one route of a few lines after another, each
    handing its work to `Service`."""
    # FastAPIOffline serves /docs (Swagger UI) and /redoc from files installed with it: no CDN, so they work offline.
    api = FastAPIOffline(
        title="Fine-tune vs RAG API", description="Classify with both backends, compare, teach, decide."
    )
    api.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    api.add_middleware(SecurityHeaders, frame_ancestors=os.environ.get(FRAME_ENV_VAR, "").strip() or None)

    @api.exception_handler(InputError)
    async def _input_error(request: Request, err: InputError) -> JSONResponse:
        return error_response(400, err)

    @api.exception_handler(Refused)
    async def _refused(request: Request, err: Refused) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after else None
        return error_response(err.status, err, headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=_validation_message(err))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, err.detail, err.headers)

    @api.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "backends": sorted(state.service.backends), "unavailable": state.service.unavailable}

    @api.post("/api/classify")
    def classify(body: ClassifyBody) -> dict[str, Any]:
        return {"results": state.service.classify(body.texts, body.backends)}

    @api.post("/api/compare")
    def compare(body: CompareBody) -> dict[str, Any]:
        return state.compare_texts(body.texts, body.labels)

    @api.post("/api/teach")
    def teach(body: TeachBody, request: Request, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        """Add labeled examples to the shared index (see SECURITY.md for who may)."""
        return state.service.teach(body.texts, body.labels, bearer_token(authorization), client_of(request))

    @api.delete("/api/teach/{teach_id}")
    def forget(
        teach_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
        request: Request,
        authorization: str | None = Header(default=None),
    ) -> dict[str, Any]:
        """Remove one taught example (the id that /api/teach returned)."""
        return state.service.forget(teach_id, bearer_token(authorization), client_of(request))

    @api.post("/api/recommend")
    def recommend(body: RecommendBody) -> dict[str, Any]:
        try:
            constraints = Constraints(**body.model_dump())
        except ValueError as err:
            raise InputError(str(err)) from err
        return state.recommend(constraints)

    @api.get("/api/models")
    def models() -> dict[str, Any]:
        return state.service.models()

    return api
