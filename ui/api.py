"""The REST API for integrators (a website chat widget, a CRM), beside the web app, and the load balancer's endpoints.

- `POST /v1/chat` `{"session", "message"}` → the turn as soon as it is decided: reply, intent, confidence, fallback,
  and where to read its explanation (`GET /v1/turns/{id}`; or in the answer with `"wait_for_explanation": true`).
- `POST /webhooks/rest/webhook` `{"sender", "message"}` → `[{"recipient_id", "text"}]`, as Rasa's REST channel
  answers, so its channel connectors work unchanged (with the bearer token).
- `GET /v1/turns` (the Audit tab's filters and paging) and `GET /v1/turns/{id}` (explained on reading if its
  explanation never ran): auditors only.
- `GET /healthz` (the process answers), `GET /readyz` (the model, the audit store and the explanation queue can take
  turns), `GET /metrics` (Prometheus): no token.
- `GET /v1/openapi.json`: this API described.

Bearer tokens come from a tokens file (`ui/auth.read_tokens`: name, role, token); a chat token's conversations are
its own (a session named by two tokens is two conversations). Every token has a rate limit (429 with Retry-After).
Messages go through the same read path (guard, redaction), turn and audit log as the web app's (ui/service.py).
Every error is JSON, `{"error": "what is wrong"}`, never a traceback.
"""
from __future__ import annotations

import logging
import math
from typing import Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from bot.store import Filter
from safety.guard import Rejected
from ui.auth import RateLimit, Token, find_token

logger = logging.getLogger(__name__)
PREFIXES = ("/v1/", "/webhooks/rest/")
PATHS = ("/healthz", "/readyz", "/metrics")
RATE = 20.0  # requests a second per token, on average (bursts of twice that)
SESSION = r"^[A-Za-z0-9_.:@-]{1,128}$"
PAGE_SIZE, MAX_PAGE_SIZE = 50, 500


def is_api(path: str) -> bool:
    return path.startswith(PREFIXES) or path in PATHS


class ChatIn(BaseModel):
    session: str = Field(pattern=SESSION, description="your id of the conversation (letters, digits, _.:@-; ≤128)")
    message: str = Field(description="what the user wrote")
    wait_for_explanation: bool = Field(False, description="answer only once the explanation is stored, with it")


class RasaIn(BaseModel):
    sender: str = Field(pattern=SESSION, description="the conversation's id, as Rasa's REST channel sends it")
    message: str


class RasaOut(BaseModel):
    recipient_id: str
    text: str


class ChatOut(BaseModel):
    turn_id: int
    session: str
    text: str = Field(description="the message as the bot read it: guarded, personal data replaced by placeholders")
    redacted_types: list[str]
    reply: str
    intent: str
    confidence: float
    fallback: bool
    fallback_reason: str | None
    ranking: list[tuple[str, float]]
    model_version: str
    attributions: list[tuple[str, float | None]] | None = Field(
        description="(word, score in [-1, 1]; positive: toward the intent) once explained; null: not yet")
    explanation: str = Field(description="where the turn and its explanation can be read (auditor token)")


class TurnsOut(BaseModel):
    total: int
    page: int
    pages: int
    page_size: int
    turns: list[dict]


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def build_api(service, tokens: dict[bytes, Token] | None, rate: float = RATE) -> FastAPI:
    """The API as an app of its own (the front middleware, ui/http.py, hands it its paths). `tokens` None: the
    REST API is off (its paths answer 404 saying how to turn it on); the load balancer's endpoints still answer."""
    api = FastAPI(title="Candor REST API", version="1", openapi_url="/v1/openapi.json", docs_url=None,
                  redoc_url=None, description=__doc__.split("\n\n")[0])
    limits = RateLimit(rate)
    bearer = HTTPBearer(auto_error=False, description="a token from the server's tokens file")

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        if e.status_code == 400 and e.detail == "There was an error parsing the body":  # FastAPI's, e.g. nested too deep
            return error(400, "Malformed JSON: the body could not be parsed.")
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, "Malformed JSON: the body must be a JSON object.")
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        if not where and first.get("loc", ())[:1] == ("body",):
            return error(400, "The body must be a JSON object (Content-Type: application/json).")
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @api.exception_handler(Exception)
    async def failed(request: Request, e: Exception):
        logger.exception("REST %s %s failed", request.method, request.url.path)
        return error(500, "The server failed to answer this request; the failure is in its log.")

    def caller(role: str):
        def check(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Token:
            if tokens is None:
                raise HTTPException(404, "The REST API is off: start candor serve with --tokens-file FILE.")
            token = find_token(tokens, creds.credentials) if creds else None
            if token is None:
                raise HTTPException(401, "A bearer token from the server's tokens file is needed "
                                         "(Authorization: Bearer TOKEN).", headers={"WWW-Authenticate": "Bearer"})
            if token.role != role:
                raise HTTPException(403, f"This needs a token with the {role} role; '{token.name}' has {token.role}.")
            wait = limits.take(token.name)
            if wait:
                service.metrics.rate_limited.inc()
                raise HTTPException(429, f"Too many requests for '{token.name}'; retry after {math.ceil(wait)} s.",
                                    headers={"Retry-After": str(math.ceil(wait))})
            return token
        return check

    chat_token, auditor_token = Depends(caller("chat")), Depends(caller("auditor"))

    def respond(message: str, session: str, token: Token):
        try:
            return service.respond(message, f"rest:{token.name}/{session}")
        except Rejected as e:
            raise HTTPException(400, f"Message refused: {e}.") from None

    @api.post("/v1/chat", response_model=ChatOut, summary="One chat turn")
    async def chat(body: ChatIn, token: Token = chat_token):
        """The reply, intent, confidence and fallback as soon as they are decided; the explanation follows
        (`explanation`: where to read it), or comes in the answer with `wait_for_explanation`."""
        a = await run_in_threadpool(respond, body.message, body.session, token)
        if body.wait_for_explanation:
            a = await service.explained_later(a)
        return ChatOut(turn_id=a.turn_id, session=body.session, text=a.text, redacted_types=a.redacted_types,
                       reply=a.reply, intent=a.intent, confidence=a.confidence, fallback=a.fallback,
                       fallback_reason=a.fallback_reason, ranking=a.ranking, model_version=a.model_version,
                       attributions=a.attributions if a.explanation is not None else None,
                       explanation=f"/v1/turns/{a.turn_id}")

    @api.post("/webhooks/rest/webhook", response_model=list[RasaOut], summary="Rasa's REST channel")
    async def rasa(body: RasaIn, token: Token = chat_token):
        """What Rasa's REST channel answers: the bot's messages to the sender."""
        a = await run_in_threadpool(respond, body.message, body.sender, token)
        return [RasaOut(recipient_id=body.sender, text=a.reply)]

    @api.get("/v1/turns", response_model=TurnsOut, summary="Logged turns, newest first (auditors)")
    async def turns(intent: str | None = None, min_confidence: float = 0.0, max_confidence: float = 1.0,
                    fallback: Literal["any", "yes", "no"] = "any", since: str = "", until: str = "",
                    page: int = Query(1, ge=1), page_size: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
                    token: Token = auditor_token):
        try:
            f = Filter.parse(intent, min_confidence, max_confidence, fallback, since, until)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        f.limit = page_size
        total = await run_in_threadpool(service.store.count, f)
        rows = await run_in_threadpool(service.store.query, f, (page - 1) * page_size)
        return TurnsOut(total=total, page=page, pages=max(1, -(-total // page_size)), page_size=page_size, turns=rows)

    @api.get("/v1/turns/{turn_id}", summary="One logged turn with its explanation (auditors)")
    async def one_turn(turn_id: int, token: Token = auditor_token):
        """Explained now, and stored as computed on reading, if its explanation never ran."""
        row = await run_in_threadpool(service.turn, turn_id)
        if row is None:
            raise HTTPException(404, f"No turn #{turn_id}.")
        return row

    @api.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    @api.get("/readyz", include_in_schema=False)
    async def readyz():
        problems = await run_in_threadpool(service.problems)
        return JSONResponse({"status": "ready" if not problems else "not ready", "problems": problems},
                            status_code=503 if problems else 200)

    @api.get("/metrics", include_in_schema=False)
    async def metrics():
        body, kind = service.metrics.exposition()
        return Response(body, media_type=kind)

    return api
