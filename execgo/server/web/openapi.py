# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3.1 document of the HTTP API, served at
C{/api/v1/openapi.json}, derived from the routes.

The Klein routes of L{execgo.server.web.api.RuntimeAPI} are the one table
of the API: each handler carries its L{Operation} (attached with
L{described} where the route is declared), L{routes} reads them back with
the path and method Klein routes, and L{document} turns them into the
document's C{paths}.  So a route cannot go undocumented, nor an operation
outlive its route.

Whatever has a model is generated from it: the request and response
objects (L{execgo.server.web.model_schemas}), and the error responses,
from L{execgo.core.errors}: each operation lists the error classes it
raises, and each HTTP status documents their codes.  The other response
bodies are written out in L{execgo.server.web.schemas}.  The added routes
(listing, log and event streams) and idempotent submission take their
bounds from the modules that enforce them (L{execgo.store.listing},
L{execgo.store.idempotency}).

No Twisted here; the document is plain data.
"""

from __future__ import annotations

import copy
import re
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
)

import attrs
from werkzeug.routing import Map

from execgo import __version__
from execgo.core import errors
from execgo.core.constants import ALL_STATUSES, JSON
from execgo.core.protocol import (
    IDEMPOTENCY_HEADER,
    LOG_OFFSET_HEADER,
    LOG_SIZE_HEADER,
    MAX_WAIT_MS,
    NDJSON_TYPE,
    OCTET_TYPE,
    OWNER_HEADER,
)
from execgo.server.web.model_schemas import model_schemas
from execgo.server.web.schemas import (
    CURSOR_PATTERN,
    ERROR_CODES,
    STRING,
    enum,
    other_schemas,
    ref,
)
from execgo.store import idempotency, listing

__all__ = [
    "ADMIN_ONLY",
    "BATCH_BODY",
    "ERROR_CODES",
    "EVENTS_OK",
    "FOLLOW",
    "IDEMPOTENCY_KEY",
    "LIST_PARAMETERS",
    "OPENAPI_VERSION",
    "OWNER",
    "PATH",
    "PER_TASK",
    "STATUS_OK",
    "STORAGE_ERRORS",
    "SUBMIT_BODY",
    "TASK_ID",
    "WAIT_MS",
    "Operation",
    "Route",
    "described",
    "document",
    "json_response",
    "log_operation",
    "routes",
    "text_response",
    "uint_query",
]

OPENAPI_VERSION = "3.1.0"
PATH = "/api/v1/openapi.json"

#: What reading the store may raise, besides what the operation itself does.
STORAGE_ERRORS: Tuple[Type[errors.ExecgoError], ...] = (
    errors.Internal,
    errors.Unavailable,
    errors.InsufficientStorage,
)
_BEARER = "bearerToken"

#: What tenancy means for the operations on one task, when bearer tokens
#: are required.
PER_TASK = (
    "With bearer tokens, a task of another tenant answers 404 not_found "
    "exactly like an unknown id (a token with role=admin sees every tenant)."
)
#: What tenancy means for the views that span tenants.
ADMIN_ONLY = (
    "With bearer tokens, only a token with role=admin may read this (it "
    "spans tenants); any other token gets 403 permission_denied."
)


@attrs.frozen
class Operation:
    """
    What the document says of one route.

    @ivar operation_id: its unique C{operationId}.
    @ivar summary: one line.
    @ivar ok: its C{200} response.
    @ivar parameters: its parameters; the C{path} ones name the route's
        variables, in order.
    @ivar raises: the error classes it raises, besides routing errors
        (404 for an unknown path, 405 for a wrong method), which belong to
        no operation; L{errors.Unauthorized} is added unless it is public.
    @ivar public: open to everyone even when the server requires bearer
        tokens (C{--auth-token-file}); every other operation may answer 401.
    @ivar description: what tenancy means for it when bearer tokens are
        required, if anything.
    @ivar request_body: its C{requestBody}, if it reads one.
    @ivar more_responses: answers that are not error envelopes, by status.
    """

    operation_id: str
    summary: str
    ok: JSON
    parameters: Tuple[JSON, ...] = ()
    raises: Tuple[Type[errors.ExecgoError], ...] = ()
    public: bool = False
    description: Optional[str] = None
    request_body: Optional[JSON] = None
    more_responses: Optional[JSON] = None


@attrs.frozen
class Route:
    """
    One route as Klein serves it, with the operation it declares.

    @ivar path: the route's pattern (variables written C{<name>}).
    @ivar method: the HTTP method, lower case.
    """

    path: str
    method: str
    operation: Operation


_Handler = TypeVar("_Handler", bound=Callable[..., Any])
_OPERATION = "openapi_operation"
#: Methods Klein or Twisted answer for every route by themselves.
_IMPLIED_METHODS = frozenset({"HEAD", "OPTIONS"})


def described(operation: Operation) -> Callable[[_Handler], _Handler]:
    """
    Attach C{operation} to a route's handler, where the route is declared
    (under its C{@app.route}), for L{routes} to find.
    """

    def attach(handler: _Handler) -> _Handler:
        setattr(handler, _OPERATION, operation)
        return handler

    return attach


def routes(url_map: Map, handlers: type) -> Tuple[Route, ...]:
    """
    The routes of a Klein app, in the order they are declared, each with
    the operation its handler declares.

    @param url_map: the app's routing table (C{Klein.url_map}).
    @param handlers: the class whose methods handle the routes (each
        rule's endpoint names one).
    @raise TypeError: a route declares no operation.
    """
    found: List[Route] = []
    for rule in url_map.iter_rules():
        operation = getattr(getattr(handlers, rule.endpoint, None), _OPERATION, None)
        if not isinstance(operation, Operation):
            raise TypeError(f"the route {rule.rule} declares no operation")
        for method in sorted(set(rule.methods or ()) - _IMPLIED_METHODS):
            found.append(Route(rule.rule, method.lower(), operation))
    return tuple(found)


# ---------------------------------------------------------------- responses and parameters


def json_response(description: str, schema: JSON) -> JSON:
    """
    A response with a JSON body valid for C{schema}.
    """
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text_response(description: str) -> JSON:
    """
    A response with a plain-text body.
    """
    return {"description": description, "content": {"text/plain": {"schema": STRING}}}


def uint_query(name: str, description: str) -> JSON:
    """
    An optional non-negative integer query parameter, 0 when absent, as
    L{execgo.server.web.site.uint_arg} reads it: more than 20 digits is refused, a value past
    2**63-1 capped (so no C{maximum}: a larger value is not refused).
    """
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    }


def _query(name: str, description: str, schema: JSON) -> JSON:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


TASK_ID: JSON = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The task id, percent-decoded and used verbatim.",
    "schema": STRING,
}
WAIT_MS: JSON = {
    "name": "wait_ms",
    "in": "query",
    "required": False,
    "description": (
        "Answer as soon as the task is terminal, or after this many "
        f"milliseconds (capped at {MAX_WAIT_MS}); 0 or absent: at once."
    ),
    "schema": {"type": "integer", "minimum": 0},
}
OWNER: JSON = {
    "name": OWNER_HEADER,
    "in": "header",
    "required": False,
    "description": "Must equal the task's control_context.owner when it has one.",
    "schema": STRING,
}
FOLLOW: JSON = {
    "name": "follow",
    "in": "query",
    "required": False,
    "description": "true: keep streaming until the task is terminal and all is sent.",
    "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
}
IDEMPOTENCY_KEY: JSON = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes the submission retryable: the same key with the same "
        "request (after normalisation) answers 200 with the first "
        "submission's task and creates nothing; with another request, "
        "409 conflict. A key lives as long as its task."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": idempotency.MAX_KEY_LENGTH,
        "pattern": "^[\\x21-\\x7E]+$",
    },
}
#: The query of C{GET /api/v1/tasks} (L{listing.parse_query}): each
#: parameter at most once but C{label}, none empty.
LIST_PARAMETERS: Tuple[JSON, ...] = (
    _query("status", "Only tasks in this status.", enum(ALL_STATUSES)),
    _query("tenant", "Only tasks of this tenant (exact match).", dict(STRING, minLength=1)),
    _query("owner", "Only tasks of this owner (exact match).", dict(STRING, minLength=1)),
    dict(
        _query(
            "label",
            "Only tasks with this control_context label, as key:value split at "
            "the first ':'; repeat it for several (all must match).",
            {
                "type": "array",
                "maxItems": listing.MAX_LABELS,
                "items": {"type": "string", "pattern": "^[^:]+:"},
            },
        ),
        style="form",
        explode=True,
    ),
    _query(
        "limit",
        "The page size.",
        {
            "type": "integer",
            "minimum": 1,
            "maximum": listing.MAX_LIMIT,
            "default": listing.DEFAULT_LIMIT,
        },
    ),
    _query(
        "cursor",
        "next_cursor of the previous page; absent for the first page.",
        dict(STRING, pattern=CURSOR_PATTERN),
    ),
)
SUBMIT_BODY: JSON = {"required": True, "content": {"application/json": {"schema": ref("SubmitTaskRequest")}}}
BATCH_BODY: JSON = {"required": True, "content": {"application/json": {"schema": ref("BatchSubmitRequest")}}}
STATUS_OK = json_response("The task status snapshot", ref("TaskStatusResponse"))
#: The 200 of C{GET /api/v1/tasks/{id}/events}: a JSON array, or NDJSON
#: when following.
EVENTS_OK: JSON = {
    "description": (
        "The events as a JSON array; with follow=true, as NDJSON: one "
        "EventRecord per line, new ones as they are appended, until the "
        "terminal event (finished, failed or cancelled) has been sent."
    ),
    "content": {
        "application/json": {"schema": {"type": "array", "items": ref("EventRecord")}},
        NDJSON_TYPE: {
            "schema": STRING,
            # What OpenAPI 3.2 calls itemSchema: the schema of each line.
            "x-item-schema": ref("EventRecord"),
        },
    },
}


def log_operation(name: str) -> Operation:
    """
    C{GET /api/v1/tasks/{id}/stdout} or C{/stderr}.
    """
    size = {
        "required": True,
        "description": "The size of the log when the response started.",
        "schema": {"type": "integer", "minimum": 0},
    }
    offset = {
        "required": True,
        "description": "The offset served from.",
        "schema": {"type": "integer", "minimum": 0},
    }
    ok = {
        "description": (
            "The bytes from offset to the end at that moment (offset past the "
            "end: none); with follow=true also the bytes written afterwards "
            "(chunked), until the task is terminal and all is sent. A client "
            "reconnecting with offset = the bytes it received misses nothing "
            "and sees nothing twice. HEAD answers the headers alone."
        ),
        "headers": {LOG_SIZE_HEADER: size, LOG_OFFSET_HEADER: offset},
        "content": {OCTET_TYPE: {}},
    }
    return Operation(
        f"getTask{name.capitalize()}",
        f"The task's {name} log, from an offset; with follow=true, streamed",
        ok,
        (TASK_ID, uint_query("offset", "The byte offset to start from."), FOLLOW),
        raises=(errors.InvalidInput, errors.NotFound, *STORAGE_ERRORS),
        description=PER_TASK,
    )


# ---------------------------------------------------------------- errors


def _error_classes() -> List[Type[errors.ExecgoError]]:
    """
    L{errors.ExecgoError} and all its subclasses.
    """
    found = [errors.ExecgoError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


def _error_responses(raised: Sequence[Type[errors.ExecgoError]]) -> JSON:
    """
    One envelope response per HTTP status C{raised} can produce, its C{code}
    narrowed to the codes of those classes (and their subclasses with the
    same status).
    """
    out: JSON = {}
    for status in sorted({cls.http_status for cls in raised}):
        with_status = [cls for cls in raised if cls.http_status == status]
        codes = {
            cls.code
            for cls in _error_classes()
            if cls.http_status == status and issubclass(cls, tuple(with_status))
        }
        narrowed = {"properties": {"code": {"enum": [c for c in ERROR_CODES if c in codes]}}}
        schema = {"allOf": [ref("ErrorResponse"), {"properties": {"error": narrowed}}]}
        response = json_response(", ".join(sorted(cls.__name__ for cls in with_status)), schema)
        if status == errors.Unauthorized.http_status:
            response["headers"] = {"WWW-Authenticate": {"required": True, "schema": STRING}}
        out[str(status)] = response
    return out


# ---------------------------------------------------------------- paths


def _operation_object(operation: Operation) -> JSON:
    """
    The document's object for C{operation}: its 200 response, the error
    responses of what it raises, and its other answers.
    """
    raised = operation.raises if operation.public else (*operation.raises, errors.Unauthorized)
    responses: JSON = {"200": operation.ok, **_error_responses(raised), **(operation.more_responses or {})}
    out: JSON = {"operationId": operation.operation_id, "summary": operation.summary}
    if operation.description is not None:
        out["description"] = operation.description
    if operation.parameters:
        out["parameters"] = list(operation.parameters)
    if operation.request_body is not None:
        out["requestBody"] = operation.request_body
    # No token ({}), or a bearer token when the server requires one.
    out["security"] = [] if operation.public else [{}, {_BEARER: []}]
    out["responses"] = {key: responses[key] for key in sorted(responses)}
    return out


_VARIABLE = re.compile(r"<(?:[^:>]+:)?[^>]+>")


def _document_path(route: Route) -> str:
    """
    The route's path as the document writes it: each route variable named
    by the operation's path parameter in its place (C{<task_id>} is
    C{{id}}).

    @raise ValueError: the variables and the path parameters differ in
        number.
    """
    names = [parameter["name"] for parameter in route.operation.parameters if parameter["in"] == "path"]
    if len(names) != len(_VARIABLE.findall(route.path)):
        raise ValueError(f"{route.method} {route.path}: its path parameters are {names}")
    spelled = iter(names)
    return _VARIABLE.sub(lambda _: "{" + next(spelled) + "}", route.path)


def _paths(served: Iterable[Route]) -> JSON:
    """
    The document's C{paths}, in the order of the routes.
    """
    out: Dict[str, JSON] = {}
    for route in served:
        out.setdefault(_document_path(route), {})[route.method] = _operation_object(route.operation)
    return out


_SECURITY_SCHEMES: Mapping[str, JSON] = {
    _BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "Required only when the server runs with "
            "--auth-token-file; the token's tenant and owner then "
            "override the request's control_context, and the "
            "token sees only its tenant's tasks (others answer "
            "404 like unknown ids) unless it has role=admin, "
            "which alone reads /api/v1/runtime/resources and "
            "/metrics (others: 403)."
        ),
    }
}


def document(served: Iterable[Route], version: str = __version__) -> JSON:
    """
    The OpenAPI 3.1 document of the API, as a JSON-ready C{dict} (a new one
    on every call).

    @param served: the routes the API serves (L{routes}).
    @param version: the version to report in C{info.version}.
    """
    schemas = model_schemas()
    schemas.update(other_schemas())
    # Deep-copied: the parts shared between schemas (and with this module)
    # must not be changed through one document.
    return copy.deepcopy({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "execgo runtime API",
            "version": version,
            "description": (
                "The HTTP API of the execgo task-execution runtime. Every error "
                "produced by the runtime uses the envelope "
                '{"error": {"code": ..., "message": ...}}; an unknown path gets '
                "404 not_found, a wrong method 405 invalid_input, and a path "
                "that is not valid UTF-8 once percent-decoded 400 invalid_input. "
                "The listener closes a connection whose request line and headers "
                "take longer than --request-header-timeout-ms (default 10000) and "
                "one idle, with no request in flight, for --idle-connection-timeout-ms "
                "(default 60000; long-polls and follow streams are not idle); past "
                "--max-connections (default: three quarters of the descriptor limit) "
                "it closes the longest-idle connection, or answers 503 and closes."
            ),
        },
        "paths": _paths(served),
        "components": {"schemas": schemas, "securitySchemes": dict(_SECURITY_SCHEMES)},
    })
