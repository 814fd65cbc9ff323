# -*- test-case-name: tests.test_api -*-
"""
The HTTP API (C{docs/api.md}) as a Klein app on an object.

Handlers only translate HTTP to L{execgo.server.runtime.Runtime} calls and back;
every error becomes the contract's envelope in one place (L{RuntimeAPI.error},
whose mapping also answers each refused item of a batch), and nothing a
client sends can produce a 5xx.  With authentication each
handler hands the request's principal on: the runtime applies tenancy to
every operation on tasks, and the views that span tenants are for admins
(L{execgo.server.web.auth.require_admin}).

The routes are the API's one table: each declares, under its
C{@app.route}, the OpenAPI operation it serves
(L{execgo.server.web.openapi.described}), and the document served at
C{/api/v1/openapi.json} is derived from them (L{ROUTES}).  The site
under them, and the readers of a request they share, are
L{execgo.server.web.site}'s; the operator page served beside them, not
one of them, is L{execgo.server.web.page}'s.
"""

from __future__ import annotations

from typing import Any, List, Optional, Set, Union

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from execgo.core import errors, protocol
from execgo.core.constants import JSON
from execgo.server import metrics
from execgo.server.relay import relay_credentials
from execgo.server.runtime import Runtime
from execgo.server.web import openapi, responses, schemas
from execgo.server.web.auth import Principal, Tokens, require_admin
from execgo.server.web.page import OperatorPage, PageOrAPI
from execgo.server.web.site import (
    Utf8Paths,
    answer_json,
    bool_arg,
    owner_from,
    request_body,
    streaming,
    uint_arg,
)
from execgo.store import idempotency, listing

log = Logger()

#: The ceiling of a status request's C{wait_ms}.
#: The ceiling of a log's C{offset} and of the events' C{after_seq}.
MAX_OFFSET = (1 << 63) - 1


class RuntimeAPI:
    """
    The Klein application serving one L{Runtime}.
    """

    app = Klein()
    app.url_map.merge_slashes = False

    def __init__(self, runtime: Runtime, tokens: Optional[Tokens] = None) -> None:
        self.runtime = runtime
        self.tokens = tokens

    def _principal(self, request: IRequest) -> Optional[Principal]:
        """
        Who the request speaks for when authentication is on (else
        C{None}); L{errors.Unauthorized} without a valid token.
        """
        if self.tokens is None:
            return None
        return self.tokens.authenticate(request.getHeader(b"authorization"))

    def resource(self) -> Any:
        """
        The twisted.web resource to serve, behind L{Utf8Paths}: the
        operator page at its own paths, the Klein app at every other
        (L{PageOrAPI}).
        """
        return Utf8Paths(PageOrAPI(OperatorPage.from_package(), self.app.resource()))

    async def _snapshot(self, request: IRequest, snapshot: Any) -> bytes:
        """
        Answer a status snapshot: one body when its previews are small,
        else streamed under the preview budget (L{responses.send_snapshot}).
        """
        runtime = self.runtime
        idle_ms = runtime.config.idle_connection_timeout_ms
        return await responses.send_snapshot(
            streaming(request),
            snapshot,
            answer_json,
            budget=getattr(runtime.store, "budget", None),
            reactor=runtime.reactor,
            stall_s=idle_ms / 1000.0 if idle_ms else None,
        )

    def _accepting(self) -> None:
        if not self.runtime.accepting:
            raise errors.Unavailable("the runtime is stopping")

    @app.route("/api/v1/tasks", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "listTasks",
            "List tasks, newest first, filtered and paged",
            openapi.json_response("One page", schemas.ref("TaskListResponse")),
            openapi.LIST_PARAMETERS,
            raises=(errors.InvalidInput, *openapi.STORAGE_ERRORS),
            description=(
                "With bearer tokens, only the tasks of the token's tenant (tenant= "
                "naming another tenant gives an empty page); a token with "
                "role=admin lists every tenant."
            ),
        )
    )
    async def list_tasks(self, request: IRequest) -> bytes:
        """
        C{GET /api/v1/tasks}: a page of tasks, newest first, filtered by
        C{status}, C{tenant}, C{owner} and C{label=k:v}, cut by C{limit} and
        C{cursor} (L{listing.parse_query}).
        """
        principal = self._principal(request)
        return answer_json(request, await self.runtime.list_tasks(listing.parse_query(request.args), principal))

    @app.route("/api/v1/tasks", methods=["POST"])
    @openapi.described(
        openapi.Operation(
            "submitTask",
            "Submit a task",
            openapi.json_response("Persisted and queued, or an idempotent retry", schemas.ref("SubmitTaskResponse")),
            (openapi.IDEMPOTENCY_KEY,),
            raises=(
                errors.InvalidInput,
                errors.PayloadTooLarge,
                errors.UnsupportedCapability,
                errors.InsufficientResources,
                errors.QueueFull,
                errors.Conflict,
                idempotency.KeyReused,
                *openapi.STORAGE_ERRORS,
            ),
            description=(
                "With bearer tokens, Idempotency-Key values are per tenant: the "
                "same key sent by two tenants makes two tasks."
            ),
            request_body=openapi.SUBMIT_BODY,
        )
    )
    async def submit(self, request: IRequest) -> bytes:
        """
        C{POST /api/v1/tasks}, optionally with an C{Idempotency-Key}.
        """
        principal = self._principal(request)
        key = idempotency.parse_key(request.requestHeaders.getRawHeaders(protocol.IDEMPOTENCY_HEADER.encode("ascii")))
        self._accepting()
        return answer_json(request, await self.runtime.submit(request_body(request), principal, key))

    @app.route("/api/v1/tasks/batch", methods=["POST"])
    @openapi.described(
        openapi.Operation(
            "submitTasks",
            "Submit many tasks at once, each answered as its own submission would be",
            openapi.json_response("One result per task, in order", schemas.ref("BatchSubmitResponse")),
            raises=(errors.InvalidInput, errors.PayloadTooLarge, errors.Unavailable),
            description=(
                "Each item of tasks is taken as POST /api/v1/tasks takes a body (without "
                "Idempotency-Key) and answered in its result with the status and body that "
                "request would have got. Items are independent (one refused undoes none of "
                "the others); the accepted ones are queued in item order. The errors below "
                "refuse the whole request and store nothing; an Idempotency-Key header is "
                "one of them (400). With bearer tokens, the token's tenant and owner apply "
                "to every item. GET on this path is getTask of the task whose id is batch."
            ),
            request_body=openapi.BATCH_BODY,
        )
    )
    async def submit_batch(self, request: IRequest) -> bytes:
        """
        C{POST /api/v1/tasks/batch}: each task answered with what
        C{POST /api/v1/tasks} with it as its body would have answered.
        """
        principal = self._principal(request)
        if request.requestHeaders.hasHeader(protocol.IDEMPOTENCY_HEADER.encode("ascii")):
            raise errors.InvalidInput(
                f"{protocol.IDEMPOTENCY_HEADER} is for single submissions (POST /api/v1/tasks); "
                "retry a task of a batch with its own task_id: a second submission of it answers 409 conflict"
            )
        self._accepting()
        outcomes = await self.runtime.submit_batch(request_body(request), principal)
        return answer_json(request, {"results": _batch_results(outcomes, request.path.decode("utf-8", "replace"))})

    @app.route("/api/v1/tasks/<task_id>", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getTask",
            "Status snapshot; long-poll with wait_ms",
            openapi.STATUS_OK,
            (openapi.TASK_ID, openapi.WAIT_MS),
            raises=(errors.InvalidInput, errors.NotFound, *openapi.STORAGE_ERRORS),
            description=openapi.PER_TASK,
        )
    )
    async def status(self, request: IRequest, task_id: str) -> bytes:
        """
        C{GET /api/v1/tasks/{id}}, with C{?wait_ms=N} to long-poll for the
        terminal state.
        """
        principal = self._principal(request)
        wait_ms = uint_arg(request, b"wait_ms", protocol.MAX_WAIT_MS)
        relay = relay_credentials(request.requestHeaders)
        return await self._snapshot(request, await self.runtime.status(task_id, wait_ms, principal, relay))

    @app.route("/api/v1/tasks/<task_id>/kill", methods=["POST"])
    @openapi.described(
        openapi.Operation(
            "killTask",
            "Request cancellation (the body is ignored)",
            openapi.STATUS_OK,
            (openapi.TASK_ID, openapi.OWNER),
            raises=(errors.NotFound, errors.PermissionDenied, *openapi.STORAGE_ERRORS),
            description=openapi.PER_TASK + " An admin's kill skips the owner check.",
        )
    )
    async def kill(self, request: IRequest, task_id: str) -> bytes:
        """
        C{POST /api/v1/tasks/{id}/kill}.
        """
        principal = self._principal(request)
        owner = owner_from(request) if principal is None else principal.owner
        relay = relay_credentials(request.requestHeaders)
        return await self._snapshot(request, await self.runtime.kill(task_id, owner, principal, relay))

    @app.route("/api/v1/tasks/<task_id>/stdout", methods=["GET"])
    @openapi.described(openapi.log_operation("stdout"))
    async def stdout(self, request: IRequest, task_id: str) -> bytes:
        """
        C{GET /api/v1/tasks/{id}/stdout?offset=N&follow=true|false}.
        """
        return await self._log(request, task_id, "stdout")

    @app.route("/api/v1/tasks/<task_id>/stderr", methods=["GET"])
    @openapi.described(openapi.log_operation("stderr"))
    async def stderr(self, request: IRequest, task_id: str) -> bytes:
        """
        C{GET /api/v1/tasks/{id}/stderr?offset=N&follow=true|false}.
        """
        return await self._log(request, task_id, "stderr")

    async def _log(self, request: IRequest, task_id: str, name: str) -> bytes:
        principal = self._principal(request)
        offset = uint_arg(request, b"offset", MAX_OFFSET)
        follow = bool_arg(request, b"follow")
        relay = relay_credentials(request.requestHeaders)
        return await self.runtime.stream_log(streaming(request), task_id, name, offset, follow, principal, relay)

    @app.route("/api/v1/tasks/<task_id>/events", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getTaskEvents",
            "The event log, by seq; with follow=true, streamed as NDJSON",
            openapi.EVENTS_OK,
            (openapi.TASK_ID, openapi.uint_query("after_seq", "Only the events with a greater seq."), openapi.FOLLOW),
            raises=(errors.InvalidInput, errors.NotFound, *openapi.STORAGE_ERRORS),
            description=openapi.PER_TASK,
        )
    )
    async def events(self, request: IRequest, task_id: str) -> bytes:
        """
        C{GET /api/v1/tasks/{id}/events?after_seq=N&follow=true|false}:
        the JSON array of the events after C{after_seq}, or with C{follow}
        an NDJSON stream of them that ends after the terminal event.
        """
        principal = self._principal(request)
        after_seq = uint_arg(request, b"after_seq", MAX_OFFSET)
        if bool_arg(request, b"follow"):
            return await self.runtime.stream_events(streaming(request), task_id, after_seq, principal)
        return answer_json(request, await self.runtime.events(task_id, after_seq, principal))

    @app.route("/api/v1/runtime/info", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getRuntimeInfo", "Identity and platform", openapi.json_response("Identity", schemas.ref("RuntimeInfo"))
        )
    )
    def info(self, request: IRequest) -> bytes:
        """
        C{GET /api/v1/runtime/info}.
        """
        self._principal(request)
        return answer_json(request, self.runtime.info())

    @app.route("/api/v1/runtime/capabilities", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getRuntimeCapabilities",
            "The capability snapshot taken at start-up",
            openapi.json_response("Capabilities", schemas.ref("RuntimeCapabilities")),
        )
    )
    def capabilities(self, request: IRequest) -> bytes:
        """
        C{GET /api/v1/runtime/capabilities}.
        """
        self._principal(request)
        return answer_json(request, self.runtime.capabilities_json())

    @app.route("/api/v1/runtime/config", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getRuntimeConfig",
            "The non-secret effective configuration",
            openapi.json_response("Configuration", schemas.ref("RuntimeConfig")),
        )
    )
    def config(self, request: IRequest) -> bytes:
        """
        C{GET /api/v1/runtime/config}.
        """
        self._principal(request)
        return answer_json(request, self.runtime.config_json())

    @app.route("/api/v1/runtime/cluster", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getRuntimeCluster",
            "The nodes of the cluster",
            openapi.json_response("Nodes", schemas.ref("RuntimeCluster")),
            raises=openapi.STORAGE_ERRORS,
        )
    )
    async def cluster(self, request: IRequest) -> bytes:
        """
        C{GET /api/v1/runtime/cluster}: every node that shares the store.
        """
        self._principal(request)
        return answer_json(request, await self.runtime.cluster())

    @app.route("/api/v1/runtime/resources", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getRuntimeResources",
            "The resource ledger",
            openapi.json_response("Ledger", schemas.ref("RuntimeResources")),
            raises=(errors.PermissionDenied, *openapi.STORAGE_ERRORS),
            description=openapi.ADMIN_ONLY,
        )
    )
    async def resources(self, request: IRequest) -> bytes:
        """
        C{GET /api/v1/runtime/resources} (every tenant's reservations:
        admins only, with authentication).
        """
        require_admin(self._principal(request), "/api/v1/runtime/resources")
        return answer_json(request, await self.runtime.resources())

    @app.route(openapi.PATH, methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "getOpenAPI",
            "This document",
            openapi.json_response("OpenAPI 3.1", {"type": "object", "required": ["openapi", "info", "paths"]}),
            public=True,
        )
    )
    def openapi_document(self, request: IRequest) -> bytes:
        """
        C{GET /api/v1/openapi.json}: the OpenAPI document (no token needed).
        """
        return answer_json(request, openapi.document(ROUTES, self.runtime.version))

    @app.route("/healthz", methods=["GET"])
    @openapi.described(
        openapi.Operation("healthz", "Liveness", openapi.json_response("Alive", schemas.ref("Health")), public=True)
    )
    def healthz(self, request: IRequest) -> bytes:
        """
        Liveness: always 200.
        """
        return answer_json(request, {"status": "ok", "version": self.runtime.version})

    @app.route("/readyz", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "readyz",
            "Readiness: the supervisor answers and storage (data directory, store) is usable",
            openapi.json_response("Ready", schemas.ref("Ready")),
            raises=(errors.Internal, errors.Unavailable),
            public=True,
        )
    )
    async def readyz(self, request: IRequest) -> bytes:
        """
        Readiness: the supervisor answers (else 503 with the reason) and
        the storage initialisation runs again.
        """
        try:
            await self.runtime.ready()
        except errors.ExecgoError:
            raise
        except Exception as e:
            # A store that cannot be used now (locked, full, its connection
            # lost) is not ready, with its reason; anything else is a fault.
            refused = errors.from_storage(e)
            if refused.http_status == 500 and refused.detail.startswith("database error"):
                raise refused from None
            if refused.http_status == 500:
                raise errors.Internal(f"sqlite error: {e}") from None
            raise errors.Unavailable(refused.detail) from None
        return answer_json(request, {"status": "ready", "version": self.runtime.version})

    @app.route("/metrics", methods=["GET"])
    @openapi.described(
        openapi.Operation(
            "metrics",
            "Prometheus text exposition",
            openapi.text_response("Metrics (text/plain; version=0.0.4)"),
            raises=(errors.PermissionDenied,),
            description=openapi.ADMIN_ONLY,
            more_responses={"500": openapi.text_response("The store failed: 'metrics_error <message>'")},
        )
    )
    async def metrics(self, request: IRequest) -> bytes:
        """
        Prometheus text exposition (every tenant's counts: admins only,
        with authentication).
        """
        require_admin(self._principal(request), "/metrics")
        try:
            text = await self.runtime.metrics()
        except Exception as e:
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            return f"metrics_error {e}\n".encode("utf-8")
        request.setHeader(b"content-type", metrics.CONTENT_TYPE)
        return text.encode("utf-8")

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> bytes:
        """
        Every failure becomes the error envelope with its status.
        """
        value: errors.ExecgoError
        if isinstance(failure.value, RouteNotFound):
            value = errors.NotFound(f"no route for {request.path.decode('utf-8', 'replace')}")
            value.prefix = "not found"
        elif isinstance(failure.value, RouteMethodNotAllowed):
            value = errors.MethodNotAllowed(
                f"method {request.method.decode('ascii', 'replace')} is not allowed here"
            )
        else:
            value = _refusal(failure, request.path.decode("utf-8", "replace"))
        if value.http_status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="execgo"')
        if value.http_status == 405:
            request.setHeader(b"allow", b", ".join(_allowed(failure.value)))
        return answer_json(request, value.envelope(), value.http_status)


#: The routes of L{RuntimeAPI}, each with its operation: what the OpenAPI
#: document describes.
ROUTES = openapi.routes(RuntimeAPI.app.url_map, RuntimeAPI)


def _refusal(failure: Failure, path: str, logged: bool = False) -> errors.ExecgoError:
    """
    The runtime error C{failure} is answered with: its own, else what
    L{errors.from_storage} makes of it; a fault (500) is logged, unless it
    was already.
    """
    if isinstance(failure.value, errors.ExecgoError):
        return failure.value
    refused = errors.from_storage(failure.value)
    if refused.http_status == 500 and not logged:
        log.failure("unexpected error serving {path}", failure, path=path)
    return refused


def _batch_results(outcomes: List[Union[JSON, Failure]], path: str) -> List[JSON]:
    """
    The results of a batch's items: the status and body
    C{POST /api/v1/tasks} would have answered each with.  A fault that
    failed several items (the commit they shared) is logged once.
    """
    results: List[JSON] = []
    seen: Set[int] = set()
    for outcome in outcomes:
        if not isinstance(outcome, Failure):
            results.append({"http_status": 200, "body": outcome})
            continue
        refused = _refusal(outcome, path, logged=id(outcome.value) in seen)
        seen.add(id(outcome.value))
        results.append({"http_status": refused.http_status, "body": refused.envelope()})
    return results


def _allowed(exception: Any) -> list:
    methods = getattr(exception, "valid_methods", None) or []
    return [method.encode("ascii") for method in methods]
