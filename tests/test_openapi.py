"""
Tests for L{execgo.server.web.openapi}: the OpenAPI document is valid, it says exactly
what the submit decoder accepts (so the two cannot drift apart silently),
the runtime's real responses conform to it, and a schemathesis run against
a live server finds no 5xx and no response that breaks it.

The drift tests probe L{execgo.core.decoding} from the document's side (every
field, JSON type, C{null}, requiredness, enum and bound the schema states is
what the decoder does) and from the decoder's side (the keys it reads, with
their required/default/nullable mode, are the schema's properties).  The
in-process tests validate the renderings of the real Klein app against the
documented response of their status; the live test runs the schemathesis
command line against a real server process.

Optional dependencies: C{hypothesis} (the property tests), C{jsonschema_rs}
and C{schemathesis} (validation against the document, the live run); tests
that need a missing one are skipped saying so.  Set
C{EXECGO_SCHEMATHESIS_EXAMPLES} (and C{EXECGO_SCHEMATHESIS_SEED}) to run the
live test with more generated cases by hand.
"""

from __future__ import annotations

import copy
import functools
import gc
import importlib.util
import json
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import attrs
from twisted.internet import defer
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.trial.util import suppress as SUPPRESS

from execgo import __version__
from execgo.core import decoding, errors, protocol, strictjson
from execgo.core.constants import ALL_STATUSES, NAMESPACE_NAMES
from execgo.core.decoding import UINT64_MAX, decode_submit
from execgo.core.errors import InvalidInput
from execgo.core.models import Namespaces, SandboxPolicy
from execgo.core.plan import ExecutionPlan, ResourceEnforcement
from execgo.core.reservation import Reservation
from execgo.core.results import ErrorInfo, Usage
from execgo.core.strictjson import parse_json_body
from execgo.core.validation import (
    OUTPUT_LIMIT_MAX,
    check_output_limits,
    validate_submit,
)
from execgo.server.web import api, openapi
from execgo.server.web.model_schemas import RESPONSE_MODELS
from execgo.server.web.schemas import CURSOR_PATTERN, OUTPUT_KEYS

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

try:
    import jsonschema_rs
except ImportError:  # pragma: no cover - comes with schemathesis
    jsonschema_rs = None

HAVE_SCHEMATHESIS = importlib.util.find_spec("schemathesis") is not None

NO_HYPOTHESIS = "hypothesis is not installed"
NO_JSONSCHEMA = "jsonschema_rs is not installed (it comes with schemathesis)"
NO_SCHEMATHESIS = (
    "schemathesis is not installed; add it to the tox deps (schemathesis==4.32.5) "
    "or pip install schemathesis"
)

REQUEST = "SubmitTaskRequest"
BASE: Dict[str, Any] = {"execution": {"kind": "command", "program": "p"}}

# Every endpoint of docs/api.md: the contract's, those the runtime adds
# (listing, log streams) and the document's own route.
ENDPOINTS = {
    ("get", "/api/v1/tasks"),
    ("post", "/api/v1/tasks"),
    ("post", "/api/v1/tasks/batch"),
    ("get", "/api/v1/tasks/{id}"),
    ("post", "/api/v1/tasks/{id}/kill"),
    ("get", "/api/v1/tasks/{id}/stdout"),
    ("get", "/api/v1/tasks/{id}/stderr"),
    ("get", "/api/v1/tasks/{id}/events"),
    ("get", "/api/v1/runtime/info"),
    ("get", "/api/v1/runtime/capabilities"),
    ("get", "/api/v1/runtime/config"),
    ("get", "/api/v1/runtime/cluster"),
    ("get", "/api/v1/runtime/resources"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
}


def document() -> Dict[str, Any]:
    """
    A fresh copy of the document, as it goes over the wire.
    """
    return json.loads(json.dumps(openapi.document(api.ROUTES)))


def resolve(root: Mapping[str, Any], schema: Mapping[str, Any]) -> Dict[str, Any]:
    """
    Follow C{$ref}s (local ones only) until a schema without one.
    """
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        schema = target
    return dict(schema)


# ---------------------------------------------------------------- the request schema as a table


@attrs.frozen
class Field:
    """
    One property of the request schema, flattened.

    @ivar path: dotted, as the decoder names it in messages.
    @ivar types: the JSON types accepted besides C{null}.
    @ivar schema: the property's schema with a top-level C{$ref} resolved.
    """

    path: str
    types: frozenset
    nullable: bool
    required: bool
    schema: Mapping[str, Any]

    @property
    def enum(self) -> Optional[List[Any]]:
        """
        The allowed values other than C{null}, if the schema lists them.
        """
        values = self.schema.get("enum")
        return None if values is None else [v for v in values if v is not None]


def _property(root: Mapping[str, Any], schema: Mapping[str, Any]) -> Tuple[frozenset, bool, Dict[str, Any]]:
    """
    The JSON types, nullability and (resolved) schema of one property.
    """
    nullable = False
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s != {"type": "null"}]
        nullable = len(options) < len(schema["anyOf"])
        assert len(options) == 1, schema
        schema = options[0]
    merged = {k: v for k, v in schema.items() if k != "$ref"}
    merged.update(resolve(root, schema))
    declared = merged["type"]
    types = set([declared] if isinstance(declared, str) else declared)
    if "null" in types:
        nullable = True
        types.discard("null")
    return frozenset(types), nullable, merged


def request_fields(root: Optional[Mapping[str, Any]] = None) -> List[Field]:
    """
    Every property of C{SubmitTaskRequest}, nested objects included, in
    document order.
    """
    root = root if root is not None else document()
    fields: List[Field] = []

    def walk(schema: Mapping[str, Any], prefix: str) -> None:
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            types, nullable, resolved = _property(root, prop)
            path = prefix + name
            fields.append(Field(path, types, nullable, name in required, resolved))
            if "properties" in resolved:
                walk(resolved, path + ".")

    walk(root["components"]["schemas"][REQUEST], "")
    return fields


def with_value(path: str, value: Any, base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """
    A copy of C{base} (default L{BASE}) with the field at C{path} set, every
    missing or C{null} parent object created.
    """
    obj = copy.deepcopy(BASE if base is None else base)
    *parents, last = path.split(".")
    node = obj
    for name in parents:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[last] = value
    return obj


def without(path: str) -> Dict[str, Any]:
    """
    A copy of L{BASE} with the field at C{path} removed (its parents present).
    """
    obj = with_value(path, None)
    *parents, last = path.split(".")
    node = obj
    for name in parents:
        node = node[name]
    del node[last]
    return obj


def fitting(schema: Mapping[str, Any], length: int) -> str:
    """
    A string of C{length} ASCII characters matching the schema's
    C{pattern} (ignoring its length bounds): C{a}s, or for a path pattern
    C{a}s in components of at most 255 separated by C{/}.
    """
    pattern = schema.get("pattern")
    for candidate in ("a" * length, ("a" * 255 + "/") * (length // 256) + "a" * (length % 256)):
        if pattern is None or re.search(pattern.replace("$", r"\Z"), candidate):
            return candidate
    raise AssertionError(f"no string of {length} characters fits {pattern}")


def decode_rejection(obj: Any) -> Optional[str]:
    """
    The detail of the decoder's rejection of C{obj}, or C{None}.
    """
    try:
        decode_submit(obj)
    except InvalidInput as error:
        return error.detail
    return None


def rejected_at(obj: Any, path: str) -> bool:
    """
    Whether the decoder rejects C{obj} because of the field at C{path}.
    """
    detail = decode_rejection(obj)
    return detail is not None and detail.startswith(path + ": ")


def fully_rejected(obj: Any) -> bool:
    """
    Whether the whole submit pipeline (decoding, the semantic rules and the
    output-limit bound) rejects C{obj}.
    """
    try:
        request = decode_submit(obj)
        validate_submit(request)
        check_output_limits(request)
    except InvalidInput:
        return True
    return False


SAMPLES: Mapping[str, Any] = {
    "null": None,
    "boolean": True,
    "integer": 7,
    "number": 0.5,
    "string": "s",
    "array": ["s"],
    "object": {},
}


def sample(field: Field, json_type: str) -> Any:
    """
    A value of C{json_type}, taken from the field's enum when it has one.
    """
    if json_type == "string" and field.enum:
        return field.enum[0]
    return SAMPLES[json_type]


class DocumentTests(SynchronousTestCase):
    """
    The shape of the document.
    """

    def test_endpoints(self) -> None:
        """
        Every endpoint of C{docs/api.md} is there, the document's own route
        included, and nothing else; each operation has a unique id and a
        200 response.
        """
        doc = document()
        self.assertEqual(doc["openapi"], openapi.OPENAPI_VERSION)
        found = {(m, p) for p, ops in doc["paths"].items() for m in ops}
        self.assertEqual(found, ENDPOINTS)
        ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
        self.assertEqual(len(ids), len(set(ids)))
        for ops in doc["paths"].values():
            for op in ops.values():
                self.assertIn("200", op["responses"])
        self.assertIn(openapi.PATH, doc["paths"])

    def test_routes(self) -> None:
        """
        The document describes exactly the routes of
        L{execgo.server.web.api.RuntimeAPI}, method by method.
        """
        documented = {(m, p) for p, ops in document()["paths"].items() for m in ops}
        routes = app_routes()
        self.assertEqual(
            (sorted(routes - documented), sorted(documented - routes)),
            ([], []),
            "(routes not documented, documented operations without a route)",
        )

    def test_paths_in_route_order(self) -> None:
        """
        The paths come in the order their routes are declared, the methods
        of a path too: the document's bytes follow the route table.
        """
        paths = document()["paths"]
        self.assertEqual(
            list(paths),
            [
                "/api/v1/tasks",
                "/api/v1/tasks/batch",
                "/api/v1/tasks/{id}",
                "/api/v1/tasks/{id}/kill",
                "/api/v1/tasks/{id}/stdout",
                "/api/v1/tasks/{id}/stderr",
                "/api/v1/tasks/{id}/events",
                "/api/v1/runtime/info",
                "/api/v1/runtime/capabilities",
                "/api/v1/runtime/config",
                "/api/v1/runtime/cluster",
                "/api/v1/runtime/resources",
                openapi.PATH,
                "/healthz",
                "/readyz",
                "/metrics",
            ],
        )
        self.assertEqual(list(paths["/api/v1/tasks"]), ["get", "post"])

    def test_undocumented_route(self) -> None:
        """
        A route whose handler declares no operation cannot go into the
        document: L{openapi.routes} refuses it, naming it.
        """
        from klein import Klein

        class Handlers:
            app = Klein()

            @app.route("/bare", methods=["GET"])
            def bare(self, request: Any) -> bytes:
                return b""

        error = self.assertRaises(TypeError, openapi.routes, Handlers.app.url_map, Handlers)
        self.assertIn("/bare", str(error))

    def test_path_variables(self) -> None:
        """
        Each route variable is written as the operation's path parameter
        in its place; a route whose variables and path parameters differ
        in number is refused.
        """
        from klein import Klein

        def parameter(name: str) -> Dict[str, Any]:
            return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

        ok = openapi.json_response("A part", {"type": "object"})

        class Handlers:
            app = Klein()

            @app.route("/things/<thing>/parts/<int:index>", methods=["GET"])
            @openapi.described(openapi.Operation("getPart", "A part", ok, (parameter("id"), parameter("n"))))
            def part(self, request: Any, thing: str, index: int) -> bytes:
                return b""

            @app.route("/things/<thing>", methods=["PUT"])
            @openapi.described(openapi.Operation("putThing", "A thing", ok))
            def put(self, request: Any, thing: str) -> bytes:
                return b""

        part, put = openapi.routes(Handlers.app.url_map, Handlers)
        self.assertEqual((part.method, put.method), ("get", "put"))
        self.assertEqual(list(openapi.document([part])["paths"]), ["/things/{id}/parts/{n}"])
        error = self.assertRaises(ValueError, openapi.document, [put])
        self.assertIn("/things/<thing>", str(error))

    def test_version(self) -> None:
        """
        C{info.version} is the package version unless another is asked for.
        """
        self.assertEqual(openapi.document(api.ROUTES)["info"]["version"], __version__)
        self.assertEqual(openapi.document(api.ROUTES, "9.9.9")["info"]["version"], "9.9.9")

    def test_fresh_and_serialisable(self) -> None:
        """
        Every call builds a new document (changing one leaves the next
        alone), and it is plain JSON.
        """
        first = openapi.document(api.ROUTES)
        first["components"]["schemas"][REQUEST]["properties"].clear()
        first["paths"].clear()
        second = openapi.document(api.ROUTES)
        self.assertIn("task_id", second["components"]["schemas"][REQUEST]["properties"])
        self.assertEqual(json.loads(json.dumps(second, allow_nan=False)), document())

    def test_references_resolve(self) -> None:
        """
        Every C{$ref} points at a component that exists.
        """
        doc = document()
        refs: List[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if "$ref" in node:
                    refs.append(node["$ref"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(doc)
        self.assertTrue(refs)
        for ref in refs:
            self.assertTrue(ref.startswith("#/components/schemas/"), ref)
            self.assertIn(ref.rsplit("/", 1)[1], doc["components"]["schemas"])

    def test_meta_schema(self) -> None:
        """
        The document is valid against the OpenAPI 3.1 meta-schema, and
        every component schema is a valid JSON Schema (2020-12).
        """
        if not HAVE_SCHEMATHESIS:
            raise SkipTest(NO_SCHEMATHESIS)
        from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

        doc = document()
        OPENAPI_31_VALIDATOR.validate(doc)
        for name, schema in doc["components"]["schemas"].items():
            self.assertTrue(jsonschema_rs.meta.is_valid(schema), name)

    def test_error_codes(self) -> None:
        """
        L{openapi.ERROR_CODES} are the 15 wire error codes; every
        error class carries one of them; the envelope allows exactly them.
        """
        self.assertEqual(len(openapi.ERROR_CODES), 15)
        self.assertEqual(len(set(openapi.ERROR_CODES)), 15)
        classes = [errors.ExecgoError]
        for cls in classes:
            classes.extend(cls.__subclasses__())
        for cls in classes:
            self.assertIn(cls.code, openapi.ERROR_CODES, cls)
        doc = document()
        envelope = doc["components"]["schemas"]["ErrorResponse"]
        self.assertEqual(envelope["required"], ["error"])
        error = resolve(doc, envelope["properties"]["error"])
        self.assertEqual(error["required"], ["code", "message"])
        self.assertEqual(error["properties"]["code"]["enum"], list(openapi.ERROR_CODES))

    def test_error_statuses(self) -> None:
        """
        Each operation documents the error statuses it can answer with
        (rejections, unknown tasks, the owner check, storage faults; 401
        when tokens are required), each with the codes that go with that
        status.
        """
        storage = {"500": ["internal"], "503": ["internal"], "507": ["internal"]}
        auth = {"401": ["permission_denied"]}
        expected = {
            ("post", "/api/v1/tasks"): {
                "400": ["invalid_input", "unsupported_capability", "insufficient_resources"],
                "409": ["conflict"],
                "413": ["invalid_input"],
                "429": ["resource_limit_exceeded"],
                **storage,
                **auth,
            },
            ("post", "/api/v1/tasks/batch"): {
                "400": ["invalid_input"],
                "413": ["invalid_input"],
                "503": ["internal"],
                **auth,
            },
            ("get", "/api/v1/tasks"): {"400": ["invalid_input"], **storage, **auth},
            ("get", "/api/v1/tasks/{id}"): {
                "400": ["invalid_input"],
                "404": ["not_found"],
                **storage,
                **auth,
            },
            ("get", "/api/v1/tasks/{id}/stdout"): {
                "400": ["invalid_input"],
                "404": ["not_found"],
                **storage,
                **auth,
            },
            ("get", "/api/v1/tasks/{id}/stderr"): {
                "400": ["invalid_input"],
                "404": ["not_found"],
                **storage,
                **auth,
            },
            ("post", "/api/v1/tasks/{id}/kill"): {
                "403": ["permission_denied"],
                "404": ["not_found"],
                **storage,
                **auth,
            },
            ("get", "/api/v1/tasks/{id}/events"): {
                "400": ["invalid_input"],
                "404": ["not_found"],
                **storage,
                **auth,
            },
            ("get", "/api/v1/runtime/info"): auth,
            ("get", "/api/v1/runtime/capabilities"): auth,
            ("get", "/api/v1/runtime/config"): auth,
            ("get", "/api/v1/runtime/cluster"): {**storage, **auth},
            ("get", "/api/v1/runtime/resources"): {"403": ["permission_denied"], **storage, **auth},
            ("get", "/healthz"): {},
            ("get", "/readyz"): {"500": ["internal"], "503": ["internal"]},
            ("get", "/api/v1/openapi.json"): {},
            ("get", "/metrics"): {**auth, "403": ["permission_denied"], "500": None},
        }
        doc = document()
        for (method, path), statuses in expected.items():
            responses = doc["paths"][path][method]["responses"]
            self.assertEqual(sorted(responses), sorted(["200", *statuses]), path)
            for status, codes in statuses.items():
                if codes is None:
                    self.assertEqual(list(responses[status]["content"]), ["text/plain"])
                    continue
                schema = responses[status]["content"]["application/json"]["schema"]
                self.assertEqual(schema["allOf"][0], {"$ref": "#/components/schemas/ErrorResponse"})
                narrowed = schema["allOf"][1]["properties"]["error"]["properties"]["code"]
                self.assertEqual(narrowed["enum"], codes, (path, status))
        metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]
        self.assertEqual(list(metrics["content"]), ["text/plain"])

    def test_batch(self) -> None:
        """
        The batch operation takes a C{BatchSubmitRequest} of 1 to
        L{protocol.MAX_BATCH_TASKS} C{SubmitTaskRequest}s and answers a
        closed C{BatchSubmitResponse}: one closed C{BatchSubmitResult} per
        task, whose body is a C{SubmitTaskResponse} or an
        C{ErrorResponse}.
        """
        doc = document()
        operation = doc["paths"]["/api/v1/tasks/batch"]["post"]
        self.assertEqual(operation["operationId"], "submitTasks")
        self.assertNotIn("parameters", operation)
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        request = resolve(doc, body)
        self.assertEqual(request["required"], ["tasks"])
        self.assertNotIn("additionalProperties", request)
        self.assertEqual(
            request["properties"]["tasks"],
            {
                "type": "array",
                "items": {"$ref": "#/components/schemas/SubmitTaskRequest"},
                "minItems": 1,
                "maxItems": protocol.MAX_BATCH_TASKS,
            },
        )
        self.assertEqual(protocol.MAX_BATCH_TASKS, 1000)
        response = resolve(doc, operation["responses"]["200"]["content"]["application/json"]["schema"])
        self.assertIs(response["additionalProperties"], False)
        self.assertEqual(response["required"], ["results"])
        results = response["properties"]["results"]
        self.assertEqual((results["minItems"], results["maxItems"]), (1, protocol.MAX_BATCH_TASKS))
        result = resolve(doc, results["items"])
        self.assertIs(result["additionalProperties"], False)
        self.assertEqual(result["required"], ["http_status", "body"])
        self.assertEqual(result["properties"]["http_status"]["type"], "integer")
        self.assertEqual(
            result["properties"]["body"],
            {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in ("SubmitTaskResponse", "ErrorResponse")]},
        )

    def test_security(self) -> None:
        """
        Bearer tokens are optional on every operation but the public
        ones (health, readiness, this document), whose 401 carries the
        C{WWW-Authenticate} header.
        """
        doc = document()
        self.assertEqual(
            doc["components"]["securitySchemes"]["bearerToken"]["scheme"], "bearer"
        )
        for path, ops in doc["paths"].items():
            for op in ops.values():
                if path in ("/healthz", "/readyz", openapi.PATH):
                    self.assertEqual(op["security"], [], path)
                    self.assertNotIn("401", op["responses"])
                else:
                    self.assertEqual(op["security"], [{}, {"bearerToken": []}], path)
                    self.assertEqual(
                        op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"], True
                    )

    def test_long_poll_parameter(self) -> None:
        """
        C{GET /api/v1/tasks/{id}} takes an optional non-negative integer
        C{wait_ms}, documented with its cap.
        """
        params = document()["paths"]["/api/v1/tasks/{id}"]["get"]["parameters"]
        wait = next(p for p in params if p["name"] == "wait_ms")
        self.assertEqual(wait["in"], "query")
        self.assertFalse(wait["required"])
        self.assertEqual(wait["schema"], {"type": "integer", "minimum": 0})
        self.assertIn("600000", wait["description"])

    def test_runtime_additions(self) -> None:
        """
        The runtime's extra optional fields are documented:
        C{resource_enforcement.mechanisms} and C{resources.cgroup} as string
        maps, not required; C{event_type} is a free string.
        """
        schemas = document()["components"]["schemas"]
        plan = schemas["ResourceEnforcementPlan"]
        self.assertEqual(plan["properties"]["mechanisms"]["additionalProperties"], {"type": "string"})
        self.assertNotIn("mechanisms", plan["required"])
        resources = schemas["RuntimeCapabilities"]["properties"]["resources"]
        self.assertEqual(resources["properties"]["cgroup"]["additionalProperties"], {"type": "string"})
        self.assertNotIn("cgroup", resources["required"])
        event_type = schemas["EventRecord"]["properties"]["event_type"]
        self.assertEqual(event_type["type"], "string")
        self.assertNotIn("enum", event_type)
        self.assertIn("pids_limit_reached", event_type["description"])


def parameters(path: str, method: str = "get") -> Dict[str, Dict[str, Any]]:
    """
    The parameters of one operation, by name, in document order.
    """
    return {p["name"]: p for p in document()["paths"][path][method].get("parameters", ())}


def pattern_matches(pattern: str, text: str) -> bool:
    """
    Whether a JSON Schema C{pattern} (unanchored, ECMA: C{$} only at the
    very end) matches C{text}.
    """
    if pattern.endswith("$"):
        pattern = pattern[:-1] + r"\Z"
    return re.search(pattern, text) is not None


def refused(call: Any, *args: Any) -> bool:
    """
    Whether C{call(*args)} raises L{InvalidInput}.
    """
    try:
        call(*args)
    except InvalidInput:
        return True
    return False


class IssueSixTests(SynchronousTestCase):
    """
    The routes the runtime adds (listing, log and event streams) and
    idempotent submission are documented with the bounds of the code
    enforcing them.
    """

    def test_list_parameters(self) -> None:
        """
        C{GET /api/v1/tasks} takes the optional query parameters of
        L{listing.parse_query}, and every bound the schema states is the
        parser's, at its edge.
        """
        from execgo.store import listing

        params = parameters("/api/v1/tasks")
        self.assertEqual(list(params), ["status", "tenant", "owner", "label", "limit", "cursor"])
        for param in params.values():
            self.assertEqual((param["in"], param["required"]), ("query", False))
        self.assertEqual(params["status"]["schema"]["enum"], list(ALL_STATUSES))
        for status in ALL_STATUSES:
            self.assertFalse(refused(listing.parse_query, {b"status": [status.encode()]}))
        self.assertTrue(refused(listing.parse_query, {b"status": [b"nope"]}))
        for name in ("tenant", "owner"):
            self.assertEqual(params[name]["schema"]["minLength"], 1)
            self.assertTrue(refused(listing.parse_query, {name.encode(): [b""]}))
            self.assertFalse(refused(listing.parse_query, {name.encode(): [b"a"]}))
        limit = params["limit"]["schema"]
        self.assertEqual(
            (limit["type"], limit["minimum"], limit["maximum"], limit["default"]),
            ("integer", 1, listing.MAX_LIMIT, listing.DEFAULT_LIMIT),
        )
        self.assertEqual(listing.parse_query({}).limit, listing.DEFAULT_LIMIT)
        for value, bad in ((1, False), (listing.MAX_LIMIT, False), (0, True), (listing.MAX_LIMIT + 1, True)):
            self.assertEqual(refused(listing.parse_query, {b"limit": [str(value).encode()]}), bad, value)

        label = params["label"]
        self.assertEqual((label["style"], label["explode"]), ("form", True))
        self.assertEqual(label["schema"]["maxItems"], listing.MAX_LABELS)
        for count, bad in ((listing.MAX_LABELS, False), (listing.MAX_LABELS + 1, True)):
            self.assertEqual(refused(listing.parse_query, {b"label": [b"k:v"] * count}), bad)
        pattern = label["schema"]["items"]["pattern"]
        for text in ("k:v", "k:", "k:a:b", "k v:", ":v", "kv", "", "::"):
            self.assertEqual(
                pattern_matches(pattern, text),
                not refused(listing.parse_query, {b"label": [text.encode()]}),
                text,
            )

        cursor = params["cursor"]["schema"]["pattern"]
        self.assertEqual(cursor, CURSOR_PATTERN)
        self.assertEqual(cursor, f"^{listing._CURSOR_TEXT.pattern}$")
        self.assertTrue(pattern_matches(cursor, listing.encode_cursor(2**63 - 1, 2**63 - 1)))
        self.assertFalse(refused(listing.parse_query, {b"cursor": [listing.encode_cursor(5, 6).encode()]}))
        for text in ("", "!", "a=", "a" * 65, "a\n"):
            self.assertFalse(pattern_matches(cursor, text), text)
            self.assertTrue(refused(listing.parse_query, {b"cursor": [text.encode()]}), text)

    def test_list_response(self) -> None:
        """
        A page is C{tasks} and C{next_cursor} (a cursor, or null on the
        last page); an entry is the status snapshot without its four output
        keys, as closed as the snapshot.
        """
        schemas = document()["components"]["schemas"]
        page = schemas["TaskListResponse"]
        self.assertEqual(page["required"], ["tasks", "next_cursor"])
        self.assertIs(page["additionalProperties"], False)
        self.assertEqual(page["properties"]["tasks"]["items"], {"$ref": "#/components/schemas/TaskSummary"})
        self.assertEqual(page["properties"]["next_cursor"]["type"], ["string", "null"])
        status, summary = schemas["TaskStatusResponse"], schemas["TaskSummary"]
        self.assertEqual(
            OUTPUT_KEYS, ("stdout", "stderr", "stdout_truncated", "stderr_truncated")
        )
        self.assertEqual(
            summary["properties"],
            {k: v for k, v in status["properties"].items() if k not in OUTPUT_KEYS},
        )
        self.assertEqual(
            summary["required"], [k for k in status["required"] if k not in OUTPUT_KEYS]
        )
        self.assertIs(summary["additionalProperties"], False)

    def test_log_streams(self) -> None:
        """
        C{stdout} and C{stderr} take C{offset} and C{follow}, answer raw
        bytes with the size and offset headers (the names and types of
        L{execgo.server.web.streams}).
        """
        from execgo.server.web import streams

        doc = document()
        ids = set()
        for name in streams.LOG_NAMES:
            path = f"/api/v1/tasks/{{id}}/{name}"
            params = parameters(path)
            self.assertEqual(list(params), ["id", "offset", "follow"])
            self.assertEqual(params["offset"]["schema"], {"type": "integer", "minimum": 0, "default": 0})
            self.assertEqual(params["follow"]["schema"]["enum"], ["true", "false"])
            operation = doc["paths"][path]["get"]
            ids.add(operation["operationId"])
            ok = operation["responses"]["200"]
            self.assertEqual(ok["content"], {"application/octet-stream": {}})
            self.assertEqual(sorted(ok["headers"]), ["X-Execgo-Log-Size", "X-Execgo-Offset"])
            for header in ok["headers"].values():
                self.assertEqual(header["schema"], {"type": "integer", "minimum": 0})
                self.assertIs(header["required"], True)
        self.assertEqual(ids, {"getTaskStdout", "getTaskStderr"})

    def test_event_stream(self) -> None:
        """
        The events take C{after_seq} and C{follow}; the 200 is a JSON array
        or, following, NDJSON lines of C{EventRecord}.
        """
        params = parameters("/api/v1/tasks/{id}/events")
        self.assertEqual(list(params), ["id", "after_seq", "follow"])
        self.assertEqual(params["after_seq"]["schema"], {"type": "integer", "minimum": 0, "default": 0})
        self.assertEqual(params["follow"]["schema"]["enum"], ["true", "false"])
        content = document()["paths"]["/api/v1/tasks/{id}/events"]["get"]["responses"]["200"]["content"]
        self.assertEqual(list(content), ["application/json", "application/x-ndjson"])
        record = {"$ref": "#/components/schemas/EventRecord"}
        self.assertEqual(content["application/json"]["schema"]["items"], record)
        self.assertEqual(content["application/x-ndjson"]["x-item-schema"], record)

    def test_idempotency_key(self) -> None:
        """
        Submissions take an optional C{Idempotency-Key} header; its schema
        accepts exactly what L{idempotency.parse_key} accepts, and the 409
        covers a reused key.
        """
        from execgo.store import idempotency

        params = parameters("/api/v1/tasks", "post")
        self.assertEqual(list(params), ["Idempotency-Key"])
        key = params["Idempotency-Key"]
        self.assertEqual((key["in"], key["required"]), ("header", False))
        self.assertEqual(key["name"].lower(), "idempotency-key")
        schema = key["schema"]
        self.assertEqual(schema["maxLength"], idempotency.MAX_KEY_LENGTH)
        samples = ["a", "!", "~", "k" * idempotency.MAX_KEY_LENGTH, "k" * (idempotency.MAX_KEY_LENGTH + 1)]
        samples += ["", " ", "a b", "a\t", "\x7f", "\x80", "\xe9", "a\n"]
        for text in samples:
            valid = schema["minLength"] <= len(text) <= schema["maxLength"] and pattern_matches(
                schema["pattern"], text
            )
            self.assertEqual(valid, not refused(idempotency.parse_key, [text.encode("latin-1")]), repr(text))
        conflict = document()["paths"]["/api/v1/tasks"]["post"]["responses"]["409"]
        self.assertIn("KeyReused", conflict["description"])


class PreviewCeilingTests(SynchronousTestCase):
    """
    The document states the server's preview ceiling, which the schema
    cannot (it is a setting).
    """

    def test_output_limits_name_the_ceiling(self) -> None:
        """
        Both output limits' descriptions name the flag and its default, and
        C{RuntimeConfig} ends with the ceiling, the listener's limits, the
        store's engine and the node's address, labels and lease.
        """
        schemas = document()["components"]["schemas"]
        for name in ("stdout_max_bytes", "stderr_max_bytes"):
            description = schemas["ResourceLimits"]["properties"][name]["description"]
            self.assertIn("--max-output-preview-bytes", description)
            self.assertIn("16777216", description)
        self.assertEqual(
            list(schemas["RuntimeConfig"]["properties"])[-8:],
            [
                "max_output_preview_bytes",
                "request_header_timeout_ms",
                "idle_connection_timeout_ms",
                "max_connections",
                "database",
                "advertise_url",
                "node_labels",
                "node_lease_ms",
            ],
        )


class ModelDriftTests(SynchronousTestCase):
    """
    The response schemas name exactly the fields of the models that render
    those responses.
    """

    def test_response_fields(self) -> None:
        """
        Each response schema generated from a model lists that model's
        attrs fields (plus the never-emitted C{details} of an error, and the
        plan's C{run_as}, which a status adds from the running task), and
        requires exactly the keys the API always emits.
        """
        schemas = document()["components"]["schemas"]
        always = {
            "ResourceEnforcementPlan": [
                "wall_time_ms",
                "cpu_time_enforced",
                "memory_enforced",
                "pids_enforced",
                "cgroup_enforced",
                "oom_detection",
            ],
            "ExecutionPlan": [
                "capability_mode",
                "requested_sandbox",
                "effective_sandbox",
                "resource_enforcement",
                "degraded",
            ],
            "Sandbox": ["profile", "chroot"],
            "Namespaces": list(NAMESPACE_NAMES),
            "ResourceUsage": ["duration_ms"],
            "TaskResourceReservation": ["task_slots"],
            "ResourceCapacity": ["task_slots"],
            "RuntimeErrorInfo": ["code", "message"],
        }
        self.assertEqual(sorted(always), sorted(name for name, _ in RESPONSE_MODELS))
        for name, model in RESPONSE_MODELS:
            extra = {"details"} if model is ErrorInfo else {"run_as"} if name == "ExecutionPlan" else set()
            self.assertEqual(
                set(schemas[name]["properties"]), {f.name for f in attrs.fields(model)} | extra, name
            )
            self.assertEqual(schemas[name]["required"], always[name], name)
            self.assertIs(schemas[name]["additionalProperties"], False)
        self.assertEqual(
            schemas["TaskStatusResponse"]["properties"]["status"]["enum"], list(ALL_STATUSES)
        )

    def test_config_fields(self) -> None:
        """
        The C{RuntimeConfig} schema lists exactly the keys of the real
        rendering, all required.
        """
        from execgo.core.config import RuntimeConfig

        rendered = RuntimeConfig().to_json("id")
        schema = document()["components"]["schemas"]["RuntimeConfig"]
        self.assertEqual(list(schema["properties"]), list(rendered))
        self.assertEqual(schema["required"], list(rendered))


class RequestDriftTests(SynchronousTestCase):
    """
    The C{SubmitTaskRequest} schema and L{decode_submit} agree field by
    field, probed from both sides.
    """

    def test_decoder_reads_the_schema_fields(self) -> None:
        """
        The keys the decoder reads, at every level, are exactly the
        schema's properties; a key it reads as required is required in the
        schema, one it reads as "or null" is nullable and not required, and
        one with a default is neither.

        The decoder is observed by recording the calls it makes on
        C{decoding._Fields} while decoding a request with every object
        present; if that helper is renamed, update this test.
        """
        fields_class = getattr(decoding, "_Fields", None)
        self.assertIsNotNone(fields_class, "decoding no longer decodes through _Fields")
        recorded: Dict[str, str] = {}

        def recorder(mode: str) -> Any:
            original = getattr(fields_class, mode)

            def record(self: Any, key: str, *args: Any) -> Any:
                recorded[self._prefix + key] = mode
                return original(self, key, *args)

            return record

        for mode in ("required", "default", "optional"):
            self.patch(fields_class, mode, recorder(mode))
        decode_submit(
            {
                "execution": {"kind": "command"},
                "limits": {},
                "sandbox": {"namespaces": {}},
                "policy": {},
                "control_context": {},
                "placement": {},
            }
        )
        expected = {}
        for field in request_fields():
            if field.required:
                self.assertFalse(field.nullable, field.path)
                expected[field.path] = "required"
            else:
                expected[field.path] = "optional" if field.nullable else "default"
        self.assertEqual(recorded, expected)

    def test_types(self) -> None:
        """
        For every field and every JSON type, the decoder rejects a value of
        that type, naming the field, exactly when the schema does not allow
        the type (C{null} included).
        """
        checked = 0
        for field in request_fields():
            for json_type in SAMPLES:
                allowed = json_type in field.types or (json_type == "null" and field.nullable)
                if json_type == "null" and field.required:
                    allowed = False
                obj = with_value(field.path, sample(field, json_type))
                self.assertEqual(
                    rejected_at(obj, field.path),
                    not allowed,
                    f"{field.path} = {json_type}: {decode_rejection(obj)}",
                )
                checked += 1
        self.assertGreater(checked, 200)

    def test_required(self) -> None:
        """
        Leaving a field out is a decoding error exactly when the schema
        requires it.
        """
        for field in request_fields():
            obj = without(field.path)
            self.assertEqual(
                decode_rejection(obj) == f"{field.path}: missing required field",
                field.required,
                field.path,
            )

    def test_enums(self) -> None:
        """
        Every enum member decodes; any other string is rejected, naming the
        field.
        """
        enums = [field for field in request_fields() if field.enum]
        self.assertEqual(
            [field.path for field in enums],
            ["execution.kind", "sandbox.profile", "policy.capability_mode"],
        )
        for field in enums:
            for value in field.enum:
                self.assertIsNone(decode_rejection(with_value(field.path, value)), value)
            for value in ("", "no-such-value", field.enum[0].upper(), " " + field.enum[0]):
                self.assertTrue(rejected_at(with_value(field.path, value), field.path), value)

    def test_integers(self) -> None:
        """
        Integer fields are 64-bit unsigned integers to the decoder, as to
        the schema: the bounds decode, one past them, a float (even an
        integral one) and a boolean do not.
        """
        integers = [field for field in request_fields() if "integer" in field.types]
        self.assertEqual(len(integers), 6)
        for field in integers:
            self.assertLessEqual(field.schema["maximum"], UINT64_MAX)
            for value in (0, UINT64_MAX):
                self.assertIsNone(decode_rejection(with_value(field.path, value)))
            for value in (-1, UINT64_MAX + 1, 1.0, 2.5, False):
                self.assertTrue(rejected_at(with_value(field.path, value), field.path), value)

    def test_bounds(self) -> None:
        """
        Each bound the schema states (C{minimum}, C{maximum}, C{minLength},
        C{maxLength}, excluded values) is enforced by the submit pipeline
        exactly at its edge: the bound itself is accepted, one past it is
        rejected.
        """
        probed = set()
        for field in request_fields():
            schema = field.schema
            edges: List[Tuple[Any, bool]] = []
            if "minimum" in schema:
                edges += [(schema["minimum"], False), (schema["minimum"] - 1, True)]
            if "maximum" in schema:
                edges += [(schema["maximum"], False), (schema["maximum"] + 1, True)]
            if "minLength" in schema:
                edges += [("a" * max(schema["minLength"], 1), False)]
                if schema["minLength"] > 0:
                    edges += [("a" * (schema["minLength"] - 1), True)]
            if "maxLength" in schema:
                longest = schema["maxLength"]
                edges += [(fitting(schema, longest), False), (fitting(schema, longest + 1), True)]
            if "not" in schema:
                edges += [(value, True) for value in schema["not"]["enum"]]
            for value, rejected in edges:
                self.assertEqual(
                    fully_rejected(with_value(field.path, value)),
                    rejected,
                    f"{field.path} = {value!r}",
                )
                probed.add(field.path)
        self.assertEqual(
            probed,
            {
                "task_id",
                "execution.program",
                "limits.wall_time_ms",
                "limits.cpu_time_sec",
                "limits.memory_bytes",
                "limits.pids_max",
                "limits.stdout_max_bytes",
                "limits.stderr_max_bytes",
                "sandbox.workspace_subdir",
                "sandbox.rootfs",
                "control_context.control_plane_mode",
                "control_context.tenant",
                "control_context.owner",
                "control_context.expected_runtime_profile",
            },
        )

    def test_key_patterns(self) -> None:
        """
        Maps whose keys the schema restricts (C{execution.env},
        C{control_context.labels}) reject a key breaking the pattern.
        """
        restricted = [field for field in request_fields() if "propertyNames" in field.schema]
        self.assertEqual(
            [field.path for field in restricted], ["execution.env", "control_context.labels"]
        )
        for field in restricted:
            pattern = field.schema["propertyNames"]["pattern"]
            self.assertIsNone(re.search(pattern, "A=B"))
            self.assertTrue(fully_rejected(with_value(field.path, {"A=B": "v"})))
            self.assertFalse(fully_rejected(with_value(field.path, {"A": "v"})))

    def test_defaults(self) -> None:
        """
        The defaults the schema documents are what the decoder fills in.
        """
        request = decode_submit(copy.deepcopy(BASE))
        schema = document()["components"]["schemas"]
        self.assertEqual(schema[REQUEST]["properties"]["limits"]["default"], request.limits.to_json())
        self.assertEqual(schema[REQUEST]["properties"]["sandbox"]["default"], request.sandbox.to_json())
        namespaces = decode_submit(with_value("sandbox.namespaces", {})).sandbox.namespaces
        assert namespaces is not None
        self.assertEqual(
            {k: v["default"] for k, v in schema["NamespaceConfig"]["properties"].items()},
            namespaces.to_json(),
        )

    def test_example(self) -> None:
        """
        The documented example request is valid, for the schema and for the
        runtime.
        """
        doc = document()
        example = doc["components"]["schemas"][REQUEST]["example"]
        self.assertFalse(fully_rejected(example))
        if jsonschema_rs is not None:
            self.assertTrue(validator(doc, f"#/components/schemas/{REQUEST}").is_valid(example))


# ---------------------------------------------------------------- hypothesis


def validator(doc: Mapping[str, Any], ref: str) -> Any:
    """
    A JSON Schema 2020-12 validator for the schema at C{ref} of C{doc}.
    """
    return jsonschema_rs.Draft202012Validator({"$ref": ref, "components": doc["components"]})


@functools.lru_cache(maxsize=None)
def shared() -> Tuple[Dict[str, Any], Any, Tuple[Field, ...]]:
    """
    The document (not to be changed), a validator of its request schema
    (C{None} without jsonschema_rs) and its request fields, built once for
    the property tests.
    """
    doc = document()
    check = None if jsonschema_rs is None else validator(doc, f"#/components/schemas/{REQUEST}")
    return doc, check, tuple(request_fields(doc))


# The keywords the strategy below understands; a schema using another one
# fails the test that uses it until the strategy learns it.
KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "not",
    "anyOf",
    "$ref",
    "default",
    "description",
    "example",
}

if HAVE_HYPOTHESIS:

    def instances(root: Mapping[str, Any], schema: Mapping[str, Any]) -> Any:
        """
        A strategy for the instances of C{schema} (the subset of JSON Schema
        in L{KEYWORDS}); objects sometimes carry an unknown key, which the
        contract ignores.
        """
        unknown = set(schema) - KEYWORDS
        if unknown:
            raise AssertionError(f"the test strategy does not know {sorted(unknown)}")
        if "$ref" in schema:
            return instances(root, resolve(root, schema))
        if "anyOf" in schema:
            return st.one_of([instances(root, option) for option in schema["anyOf"]])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        declared = schema["type"]
        types = [declared] if isinstance(declared, str) else declared
        return st.one_of([_typed(root, schema, json_type) for json_type in types])

    def _typed(root: Mapping[str, Any], schema: Mapping[str, Any], json_type: str) -> Any:
        """
        The instances of C{schema} of one JSON type.
        """
        if json_type == "null":
            return st.none()
        if json_type == "boolean":
            return st.booleans()
        if json_type == "integer":
            low, high = schema.get("minimum"), schema.get("maximum")
            edges = [v for v in (low, high) if v is not None]
            return st.integers(low, high) | st.sampled_from(edges or [0])
        if json_type == "string":
            return _strings(schema)
        if json_type == "array":
            return st.lists(instances(root, schema["items"]), max_size=3)
        if json_type == "object" and "properties" in schema:
            required = set(schema.get("required", ()))
            props = {k: instances(root, v) for k, v in schema["properties"].items()}
            return st.fixed_dictionaries(
                {k: v for k, v in props.items() if k in required},
                optional={
                    **{k: v for k, v in props.items() if k not in required},
                    "x-unknown": st.none() | st.integers() | st.text(max_size=3),
                },
            )
        if json_type == "object":
            keys = _strings(schema.get("propertyNames", {}))
            return st.dictionaries(keys, instances(root, schema["additionalProperties"]), max_size=3)
        raise AssertionError(f"unexpected type {json_type}")

    def _strings(schema: Mapping[str, Any]) -> Any:
        """
        The strings allowed by C{schema}'s length, pattern and exclusions.
        """
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema:
            # The patterns used are anchored with ^...$; \Z keeps Python's $
            # from matching before a final newline, as ECMA's does not.
            pattern = schema["pattern"]
            if pattern.endswith("$"):
                pattern = pattern[:-1] + r"\Z"
            strings = st.from_regex(pattern).filter(
                lambda s: low <= len(s) and (high is None or len(s) <= high)
            )
        else:
            strings = st.text(min_size=low, max_size=high if high is not None else 12)
        excluded = schema.get("not", {}).get("enum", [])
        return strings.filter(lambda s: s not in excluded)

    @functools.lru_cache(maxsize=None)
    def request_instances() -> Any:
        """
        The strategy for C{SubmitTaskRequest} instances, built once.
        """
        doc, _, _ = shared()
        return instances(doc, {"$ref": f"#/components/schemas/{REQUEST}"})

    JSON_VALUES = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-3, 3)
        | st.sampled_from(
            [UINT64_MAX, UINT64_MAX + 1, OUTPUT_LIMIT_MAX, OUTPUT_LIMIT_MAX + 1, 128, 129, 1.0]
        )
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=4)
        | st.sampled_from(["", ".", "..", "a=b", "a" * 128, "a" * 129, " a", "command", "process"]),
        lambda children: st.lists(children, max_size=2)
        | st.dictionaries(st.sampled_from(["", "k", "a=b", "kind"]), children, max_size=2),
        max_leaves=4,
    )

    class PropertyTests(SynchronousTestCase):
        """
        Hypothesis properties tying the schema to the decoder.
        """

        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.data())
        def test_schema_instances_decode(self, data: Any) -> None:
            """
            Every instance of the request schema, sent as JSON, decodes
            without a decoding error (the semantic rules may still reject
            it), and is valid for the schema.
            """
            _, check, _ = shared()
            instance = data.draw(request_instances())
            if check is not None:
                self.assertTrue(check.is_valid(instance))
            try:
                decode_submit(parse_json_body(json.dumps(instance).encode("utf-8")))
            except InvalidInput as error:
                self.fail(f"schema-valid request not decoded: {error.message}: {instance!r}")

        @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.data())
        def test_schema_violations_rejected(self, data: Any) -> None:
            """
            A valid request with one field replaced by an arbitrary JSON
            value is rejected by the submit pipeline whenever the schema
            rejects it: the schema states nothing the runtime does not
            enforce.
            """
            if jsonschema_rs is None:
                raise SkipTest(NO_JSONSCHEMA)
            _, check, fields = shared()
            instance = data.draw(request_instances())
            field = data.draw(st.sampled_from(fields))
            mutated = with_value(field.path, data.draw(JSON_VALUES), instance)
            if not check.is_valid(mutated):
                self.assertTrue(fully_rejected(mutated), mutated)

else:

    class PropertyTests(SynchronousTestCase):  # type: ignore[no-redef]
        """
        Placeholder reporting the property tests as skipped.
        """

        skip = NO_HYPOTHESIS

        def test_skipped(self) -> None:
            """
            Skipped: hypothesis is not installed.
            """


class ResponseModelTests(SynchronousTestCase):
    """
    Renderings of the response models validate against their schemas.
    """

    def setUp(self) -> None:
        if jsonschema_rs is None:
            raise SkipTest(NO_JSONSCHEMA)
        if not HAVE_HYPOTHESIS:
            raise SkipTest(NO_HYPOTHESIS)

    def check(self, name: str, strategy: Any) -> None:
        """
        Every drawn model's C{to_json()} is valid for the named schema.
        """
        check = validator(document(), f"#/components/schemas/{name}")

        @settings(max_examples=150, deadline=None)
        @given(strategy)
        def run(model: Any) -> None:
            rendered = model.to_json()
            errors_found = [e.message for e in check.iter_errors(rendered)]
            self.assertEqual(errors_found, [], rendered)

        run()

    def test_plan(self) -> None:
        """
        Execution plans of any shape, with mechanisms, fallback reasons and
        warnings or without.
        """
        texts = st.text(max_size=6)
        uints = st.integers(0, UINT64_MAX)
        sandboxes = st.builds(
            SandboxPolicy,
            profile=st.sampled_from(["process", "linux_sandbox"]),
            workspace_subdir=st.none() | texts,
            rootfs=st.none() | texts,
            chroot=st.booleans(),
            namespaces=st.none()
            | st.builds(Namespaces, *[st.booleans() for _ in NAMESPACE_NAMES]),
        )
        enforcement = st.builds(
            ResourceEnforcement,
            wall_time_ms=uints,
            cpu_time_sec=st.none() | uints,
            cpu_time_enforced=st.booleans(),
            memory_bytes=st.none() | uints,
            memory_enforced=st.booleans(),
            pids_max=st.none() | uints,
            pids_enforced=st.booleans(),
            cgroup_enforced=st.booleans(),
            oom_detection=st.booleans(),
            mechanisms=st.dictionaries(texts, texts, max_size=3),
        )
        self.check(
            "ExecutionPlan",
            st.builds(
                ExecutionPlan,
                capability_mode=st.sampled_from(["adaptive", "strict"]),
                requested_sandbox=sandboxes,
                effective_sandbox=sandboxes,
                resource_enforcement=enforcement,
                degraded=st.booleans(),
                fallback_reasons=st.lists(texts, max_size=2).map(tuple),
                capability_warnings=st.lists(texts, max_size=2).map(tuple),
            ),
        )

    def test_small_models(self) -> None:
        """
        Usage, reservations, capacities and task errors.
        """
        uints = st.integers(0, UINT64_MAX)
        maybe = st.none() | uints
        self.check("ResourceUsage", st.builds(Usage, uints, maybe, maybe, maybe, maybe))
        self.check("TaskResourceReservation", st.builds(Reservation, uints, maybe, maybe))
        self.check("ResourceCapacity", st.builds(Reservation, uints, maybe, maybe))
        self.check(
            "RuntimeErrorInfo",
            st.builds(ErrorInfo, st.sampled_from(openapi.ERROR_CODES), st.text(max_size=8)),
        )


# ---------------------------------------------------------------- the real app, in memory


def app_routes() -> set:
    """
    The C{(method, path)} pairs L{execgo.server.web.api.RuntimeAPI} routes, with
    path variables spelled C{{id}} as in the document.
    """
    from execgo.server.web.api import RuntimeAPI

    found = set()
    for rule in RuntimeAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?[^>]+>", "{id}", rule.rule)
        for method in set(rule.methods or ()) - {"HEAD", "OPTIONS"}:
            found.add((method.lower(), path))
    return found


def header_value(schema: Mapping[str, Any], raw: bytes) -> Any:
    """
    A response header's value as its schema types it: an integer header
    must be written in decimal digits.
    """
    text = raw.decode("ascii")
    if schema.get("type") == "integer" and text.isdigit():
        return int(text)
    return text


class ConformanceMixin:
    """
    The real Klein app over the real runtime and store (tasks stay queued),
    in memory and synchronous; L{exchange} checks each answer against the
    document.
    """

    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]

    def setUp(self) -> None:
        if jsonschema_rs is None:
            raise SkipTest(NO_JSONSCHEMA)
        from execgo.core.config import RuntimeConfig
        from tests.apifixture import MemoryRuntime, tmp_data_dir

        self.doc = document()
        self.seen: List[Tuple[str, str, int]] = []
        data_dir = tmp_data_dir(self)
        config = RuntimeConfig(
            data_dir=data_dir,
            max_queued_tasks=3,
            tenant_quotas=("alice=slots:1,memory:1024,pids:8",),
        )
        self.rt = MemoryRuntime(data_dir, config, tokens=self.tokens())
        self.rt.start()
        self.addCleanup(self.rt.stop)

    def tokens(self) -> Any:
        """
        The bearer tokens the app requires (none here).
        """
        return None

    def exchange(
        self,
        method: str,
        template: str,
        path: Optional[str] = None,
        body: Any = None,
        headers: Optional[Dict[bytes, List[bytes]]] = None,
    ) -> Tuple[int, Any]:
        """
        Send one request and check the response against the operation
        C{method template}: its status is documented, its content type is
        the documented one, its body valid for the documented schema, its
        required headers present.
        """
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        code, received, content = self.rt.request(method, path or template, body, headers)
        self.seen.append((method, template, code))
        responses = self.doc["paths"][template][method.lower()]["responses"]
        self.assertIn(str(code), responses, f"{method} {path or template}: undocumented {code}: {content!r}")
        response = responses[str(code)]
        content_type = received[b"Content-Type"][0].decode("ascii").split(";")[0].strip()
        self.assertIn(content_type, response["content"])
        lowered = {name.lower(): values for name, values in received.items()}
        for name, header in response.get("headers", {}).items():
            values = lowered.get(name.lower().encode("ascii"))
            if header.get("required"):
                self.assertIsNotNone(values, f"{method} {path or template}: no {name}")
            for raw in values or ():
                self.validate(header["schema"], header_value(header["schema"], raw), name)
        media = response["content"][content_type]
        value: Any
        if content_type == "application/json":
            value = json.loads(content)
            schema = media["schema"]
        elif content_type == protocol.NDJSON_TYPE:
            # One JSON value per line, each valid for the line schema.
            self.assertTrue(content == b"" or content.endswith(b"\n"), content)
            value = [json.loads(line) for line in content.splitlines()]
            schema = {"type": "array", "items": media["x-item-schema"]}
        elif "schema" in media:
            value = content.decode("utf-8")
            schema = media["schema"]
        else:
            # Raw bytes (application/octet-stream): nothing to validate.
            return code, content
        self.validate(schema, value, f"{method} {path or template} -> {code}")
        return code, value

    def validate(self, schema: Mapping[str, Any], value: Any, what: str) -> None:
        """
        C{value} is valid for C{schema} (whose references point into the
        document's components).
        """
        check = jsonschema_rs.Draft202012Validator({**schema, "components": self.doc["components"]})
        problems = [f"{e.instance_path}: {e.message}" for e in check.iter_errors(value)]
        self.assertEqual(problems, [], f"{what}: {value!r}")

    def envelope(self, method: str, path: str, status: int, code: str) -> None:
        """
        A request outside the operations (unknown path, wrong method) gets
        the error envelope.
        """
        got, _, content = self.rt.request(method, path)
        self.assertEqual(got, status)
        value = json.loads(content)
        check = jsonschema_rs.Draft202012Validator(
            {"$ref": "#/components/schemas/ErrorResponse", "components": self.doc["components"]}
        )
        check.validate(value)
        self.assertEqual(value["error"]["code"], code)


class InProcessConformanceTests(ConformanceMixin, SynchronousTestCase):
    """
    Every response of the app, for every status reached, is documented and
    valid.
    """

    def test_served_document(self) -> None:
        """
        C{GET /api/v1/openapi.json} answers the document, as compact JSON.
        """
        from execgo.core.encoding import compact

        code, served = self.exchange("GET", openapi.PATH)
        self.assertEqual(code, 200)
        version = self.rt.runtime.version
        self.assertEqual(served, json.loads(json.dumps(openapi.document(api.ROUTES, version))))
        _, _, content = self.rt.request("GET", openapi.PATH)
        self.assertEqual(content, compact(openapi.document(api.ROUTES, version)))

    def test_every_operation(self) -> None:
        """
        Submissions accepted and refused for each documented reason, a
        status, events, kills allowed and refused, every runtime view,
        health, readiness, metrics, routing errors: each answer matches the
        document.
        """
        self.scenario()
        reached = {(m, t, c) for m, t, c in self.seen}
        expected = {("POST", "/api/v1/tasks", status) for status in (200, 400, 409, 413, 429)}
        expected |= {("GET", "/api/v1/tasks", status) for status in (200, 400)}
        for route in ("stdout", "stderr", "events"):
            expected |= {("GET", f"/api/v1/tasks/{{id}}/{route}", s) for s in (200, 400, 404)}
        self.assertEqual(expected - reached, set())

    def test_batch(self) -> None:
        """
        A batch's answers match the document: its results (accepted and
        refused tasks), and each refusal of the whole request.
        """
        batch = "/api/v1/tasks/batch"
        tasks = [
            {"task_id": "b1", **BASE},
            {"task_id": "b1", **BASE},
            {"execution": {"kind": "command"}},
            {**BASE, "limits": {"memory_bytes": 1 << 40}},
            3,
            {"task_id": "b2", **BASE},
            {"task_id": "b3", **BASE},
            {"task_id": "b4", **BASE},
        ]
        code, answer = self.exchange("POST", batch, body={"tasks": tasks})
        self.assertEqual(code, 200)
        statuses = [result["http_status"] for result in answer["results"]]
        self.assertEqual(statuses, [200, 409, 400, 400, 400, 200, 200, 429])
        key = {protocol.IDEMPOTENCY_HEADER.encode("ascii"): [b"k"]}
        for body, headers, status in (
            ({"tasks": []}, None, 400),
            ({"tasks": [BASE] * (protocol.MAX_BATCH_TASKS + 1)}, None, 400),
            ({"tasks": [BASE]}, key, 400),
            (b"{", None, 400),
            (b"x" * (strictjson.MAX_BODY_BYTES + 1), None, 413),
        ):
            code, _ = self.exchange("POST", batch, body=body, headers=headers)
            self.assertEqual(code, status)
        self.rt.runtime.accepting = False
        code, _ = self.exchange("POST", batch, body={"tasks": [BASE]})
        self.assertEqual(code, 503)

    def test_long_poll_of_finished_task(self) -> None:
        """
        A long-poll of a task that is already terminal, or of an unknown
        one, answers at once and leaves no unhandled error behind (the
        waiter it set up is released quietly).
        """
        self.exchange("POST", "/api/v1/tasks", body={"task_id": "t", **BASE})
        self.exchange("POST", "/api/v1/tasks/{id}/kill", "/api/v1/tasks/t/kill")
        code, status = self.exchange("GET", "/api/v1/tasks/{id}", "/api/v1/tasks/t?wait_ms=60000")
        self.assertEqual((code, status["status"]), (200, "cancelled"))
        code, _ = self.exchange("GET", "/api/v1/tasks/{id}", "/api/v1/tasks/nope?wait_ms=60000")
        self.assertEqual(code, 404)
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(defer.CancelledError), [])

    def scenario(self) -> None:
        """
        The requests of L{test_every_operation}.
        """
        tasks = "/api/v1/tasks"
        script = {
            "task_id": "s1",
            "execution": {"kind": "script", "script": "echo hi", "interpreter": ["bash"]},
            "limits": {"memory_bytes": 512, "pids_max": 4, "cpu_time_sec": 1},
            "sandbox": {"profile": "linux_sandbox", "namespaces": {"net": True}},
            "control_context": {"tenant": "alice", "owner": "olga", "labels": {"a": "b"}},
            "metadata": {"k": "v"},
        }
        code, _ = self.exchange("POST", tasks, body=script)
        self.assertEqual(code, 200)
        code, _ = self.exchange("POST", tasks, body={"task_id": "c1", **BASE})
        self.assertEqual(code, 200)
        for refused in (
            {"task_id": "s1", **BASE},
            {"execution": {"kind": "command"}},
            {**BASE, "limits": {"memory_bytes": 1 << 40}},
            {**BASE, "sandbox": {"profile": "linux_sandbox"}, "policy": {"capability_mode": "strict"}},
            b"[",
            b"x" * (strictjson.MAX_BODY_BYTES + 1),
        ):
            self.exchange("POST", tasks, body=refused)
        code, _ = self.exchange("POST", tasks, body=BASE)
        self.assertEqual(code, 200)
        code, _ = self.exchange("POST", tasks, body=BASE)
        self.assertEqual(code, 429)
        one = "/api/v1/tasks/{id}"
        code, status = self.exchange("GET", one, "/api/v1/tasks/s1")
        self.assertEqual((code, status["status"]), (200, "accepted"))
        self.assertIn("script_path", status["artifacts"])
        for path in ("/api/v1/tasks/nope", "/api/v1/tasks/s1?wait_ms=x", "/api/v1/tasks/s1?wait_ms=-1"):
            code, _ = self.exchange("GET", one, path)
            self.assertIn(code, (400, 404))
        kill = "/api/v1/tasks/{id}/kill"
        code, _ = self.exchange("POST", kill, "/api/v1/tasks/s1/kill")
        self.assertEqual(code, 403)
        code, killed = self.exchange(
            "POST", kill, "/api/v1/tasks/s1/kill", headers={b"x-execgo-owner": [b"olga"]}
        )
        self.assertEqual((code, killed["status"]), (200, "cancelled"))
        code, _ = self.exchange("POST", kill, "/api/v1/tasks/nope/kill")
        self.assertEqual(code, 404)
        events = "/api/v1/tasks/{id}/events"
        code, log = self.exchange("GET", events, "/api/v1/tasks/s1/events")
        self.assertEqual(log[-1]["event_type"], "cancelled")
        code, _ = self.exchange("GET", events, "/api/v1/tasks/nope/events")
        self.assertEqual(code, 404)
        self.issue_six(status["artifacts"]["stdout_path"])

    def issue_six(self, stdout_path: str) -> None:
        """
        The added routes and idempotent submission, once task C{s1}
        (tenant C{alice}, owner C{olga}, label C{a:b}, stdout at
        C{stdout_path}) is cancelled and C{c1} and another task are queued.
        """
        tasks = "/api/v1/tasks"
        code, page = self.exchange("GET", tasks, "/api/v1/tasks?limit=1")
        self.assertEqual((code, len(page["tasks"])), (200, 1))
        self.assertIsNotNone(page["next_cursor"])
        code, rest = self.exchange("GET", tasks, f"/api/v1/tasks?limit=500&cursor={page['next_cursor']}")
        self.assertEqual((code, len(rest["tasks"]), rest["next_cursor"]), (200, 2, None))
        code, found = self.exchange(
            "GET", tasks, "/api/v1/tasks?status=cancelled&tenant=alice&owner=olga&label=a:b&label=a:b"
        )
        self.assertEqual([entry["task_id"] for entry in found["tasks"]], ["s1"])
        for bad in ("limit=0", "limit=501", "status=nope", "label=ab", "cursor=!", "tenant=", "owner="):
            code, _ = self.exchange("GET", tasks, f"/api/v1/tasks?{bad}")
            self.assertEqual(code, 400, bad)

        os.makedirs(os.path.dirname(stdout_path), exist_ok=True)
        with open(stdout_path, "wb") as f:
            f.write(b"hello\xff")
        for name in ("stdout", "stderr"):
            template = f"/api/v1/tasks/{{id}}/{name}"
            for query in ("", "?offset=1&follow=false", "?offset=99&follow=true"):
                code, body = self.exchange("GET", template, f"/api/v1/tasks/s1/{name}{query}")
                self.assertEqual(code, 200)
            if name == "stdout":
                self.assertEqual(body, b"")
                code, body = self.exchange("GET", template, "/api/v1/tasks/s1/stdout?offset=1")
                self.assertEqual(body, b"ello\xff")
            for query in ("?offset=-1", "?offset=x", "?follow=yes", "?follow="):
                code, _ = self.exchange("GET", template, f"/api/v1/tasks/s1/{name}{query}")
                self.assertEqual(code, 400, query)
            code, _ = self.exchange("GET", template, f"/api/v1/tasks/nope/{name}")
            self.assertEqual(code, 404)
        code, headers, body = self.rt.request("HEAD", "/api/v1/tasks/s1/stdout?offset=2")
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(headers[protocol.LOG_OFFSET_HEADER.encode("ascii")], [b"2"])

        events = "/api/v1/tasks/{id}/events"
        code, log = self.exchange("GET", events, "/api/v1/tasks/s1/events")
        code, after = self.exchange("GET", events, "/api/v1/tasks/s1/events?after_seq=1&follow=false")
        self.assertEqual(after, [event for event in log if event["seq"] > 1])
        code, streamed = self.exchange("GET", events, "/api/v1/tasks/s1/events?follow=true")
        self.assertEqual((code, streamed), (200, log))
        for query in ("?after_seq=-1", "?follow=1"):
            code, _ = self.exchange("GET", events, f"/api/v1/tasks/s1/events{query}")
            self.assertEqual(code, 400, query)
        code, _ = self.exchange("GET", events, "/api/v1/tasks/nope/events?follow=true")
        self.assertEqual(code, 404)

        key = {protocol.IDEMPOTENCY_HEADER.encode("ascii"): [b"key-1"]}
        code, first = self.exchange("POST", tasks, body={"task_id": "k1", **BASE}, headers=key)
        self.assertEqual(code, 200)
        code, again = self.exchange("POST", tasks, body={"task_id": "k1", **BASE}, headers=key)
        self.assertEqual((code, again), (200, first))
        code, reused = self.exchange("POST", tasks, body={"task_id": "k2", **BASE}, headers=key)
        self.assertEqual((code, reused["error"]["code"]), (409, "conflict"))
        for bad in (b"", b"a b", b"\x7f", b"k" * 256):
            code, _ = self.exchange(
                "POST", tasks, body=BASE, headers={protocol.IDEMPOTENCY_HEADER.encode("ascii"): [bad]}
            )
            self.assertEqual(code, 400, bad)
        for view in ("info", "capabilities", "config", "resources"):
            code, _ = self.exchange("GET", f"/api/v1/runtime/{view}")
            self.assertEqual(code, 200)
        for path in ("/healthz", "/readyz", "/metrics"):
            code, _ = self.exchange("GET", path)
            self.assertEqual(code, 200)
        self.envelope("GET", "/api/v1/nope", 404, "not_found")
        self.envelope("DELETE", "/api/v1/tasks", 405, "invalid_input")
        self.envelope("POST", "/healthz", 405, "invalid_input")


class AuthenticatedConformanceTests(ConformanceMixin, SynchronousTestCase):
    """
    The same app requiring bearer tokens: refusals are documented 401s.
    """

    def tokens(self) -> Any:
        """
        One token for tenant C{alice}, one for tenant C{bob}, one admin.
        """
        from execgo.server.web.auth import Principal, Tokens

        return Tokens(
            {
                "t0k": Principal(tenant="alice", owner="olga"),
                "b0b": Principal(tenant="bob", owner="bo"),
                "adm": Principal(tenant="ops", owner="oncall", admin=True),
            }
        )

    def test_tenancy_answers(self) -> None:
        """
        Another tenant's task answers the documented 404 on every per-task
        operation, the admin-only views the documented 403 to other
        tokens, and every operation a documented answer to an admin.
        """
        alice = {b"authorization": [b"Bearer t0k"]}
        bob = {b"authorization": [b"Bearer b0b"]}
        admin = {b"authorization": [b"Bearer adm"]}
        code, _ = self.exchange("POST", "/api/v1/tasks", body={"task_id": "t", **BASE}, headers=alice)
        self.assertEqual(code, 200)
        for method, template in (
            ("GET", "/api/v1/tasks/{id}"),
            ("POST", "/api/v1/tasks/{id}/kill"),
            ("GET", "/api/v1/tasks/{id}/stdout"),
            ("GET", "/api/v1/tasks/{id}/stderr"),
            ("GET", "/api/v1/tasks/{id}/events"),
        ):
            code, _ = self.exchange(method, template, template.replace("{id}", "t"), headers=bob)
            self.assertEqual(code, 404, template)
        for path in ("/api/v1/runtime/resources", "/metrics"):
            code, _ = self.exchange("GET", path, headers=bob)
            self.assertEqual(code, 403, path)
            code, _ = self.exchange("GET", path, headers=admin)
            self.assertEqual(code, 200, path)
        code, page = self.exchange("GET", "/api/v1/tasks", "/api/v1/tasks?tenant=alice", headers=bob)
        self.assertEqual((code, page["tasks"]), (200, []))
        code, _ = self.exchange("POST", "/api/v1/tasks/{id}/kill", "/api/v1/tasks/t/kill", headers=admin)
        self.assertEqual(code, 200)

    def test_every_operation(self) -> None:
        """
        Without a token every operation but the public ones answers a
        documented 401 (with C{WWW-Authenticate}); with it, as usual.
        """
        for path, ops in self.doc["paths"].items():
            for method in ops:
                concrete = path.replace("{id}", "x")
                if method == "post" and path == "/api/v1/tasks":
                    body: Any = BASE
                else:
                    body = None
                code, _ = self.exchange(method.upper(), path, concrete, body)
                if path in ("/healthz", "/readyz", openapi.PATH):
                    self.assertEqual(code, 200)
                else:
                    self.assertEqual(code, 401, path)
        auth = {b"authorization": [b"Bearer t0k"]}
        code, _ = self.exchange("POST", "/api/v1/tasks", body=BASE, headers=auth)
        self.assertEqual(code, 200)



# ---------------------------------------------------------------- schemathesis against a live server

EXAMPLES_VARIABLE = "EXECGO_SCHEMATHESIS_EXAMPLES"
SEED_VARIABLE = "EXECGO_SCHEMATHESIS_SEED"
DEFAULT_EXAMPLES = 25
DEFAULT_SEED = "1"
# The checks of the live run.  positive_data_acceptance is left out on
# purpose: the schema cannot state the cross-field rules (a command needs a
# program, chroot needs a rootfs, ...), so a schema-valid request may still
# get a documented 400.  negative_data_rejection is in: whatever breaks the
# schema must be refused.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
)
# The only programs a generated command can start (the server's PATH holds
# nothing else; random names fail to launch).
HARMLESS_PROGRAMS = ("echo", "true", "false")
# A schemathesis hooks file for the live run only.  A follow=true stream
# (logs, events) lasts until its task is terminal, and schemathesis infers
# links from POST /api/v1/tasks to the {id} routes, so generated requests
# do follow real tasks that are queued or running; the tasks here end fast,
# but one that does not would hold a worker until --request-timeout and
# fail the run.  So every follow=true is sent as follow=false, right
# before the call (in every phase; schemathesis revalidates the case, and
# follow=false is as valid, so positive cases stay positive and negative
# ones negative).  Generation is untouched: invalid follow values are still
# sent and must be refused.  Following is covered in process
# (InProcessConformanceTests) and by tests.test_streams.
LIVE_HOOKS = """
import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    if isinstance(case.query, dict) and case.query.get("follow") in ("true", True):
        case.query["follow"] = "false"
"""


# The checks the batch (submitTasks) is spared in the live run.  Its
# tasks are refused one by one inside its 200, so a request whose body
# breaks SubmitTaskRequest in one task is answered 200 on purpose (the
# refusals of the whole request are checked in process:
# InProcessConformanceTests.test_batch).  And its path is also the path
# of a task named "batch" for GET (/api/v1/tasks/{id}), which its Allow
# header names rightly, while allow_header_conformance compares Allow
# with the methods of the literal path alone (unsupported_method counts
# such templated siblings).
BATCH_SPARED = ("negative_data_rejection", "allow_header_conformance")


def live_config() -> str:
    """
    The schemathesis configuration of the live run: L{CHECKS}, but
    L{BATCH_SPARED} for the batch.  (Checks named on the command line
    would override those of an operation.)
    """
    lines = ["[checks]", "enabled = false"]
    lines += [f"{name}.enabled = true" for name in CHECKS]
    lines += ["", "[[operations]]", 'include-operation-id = "submitTasks"']
    lines += [f"checks.{name}.enabled = false" for name in BATCH_SPARED]
    return "\n".join(lines) + "\n"


def live_examples() -> int:
    """
    Generated cases per operation and phase: C{EXECGO_SCHEMATHESIS_EXAMPLES},
    else L{DEFAULT_EXAMPLES}.
    """
    return int(os.environ.get(EXAMPLES_VARIABLE) or DEFAULT_EXAMPLES)


class LiveSchemathesisTests(TestCase):
    """
    The schemathesis command line against a real server process.
    """

    # Enough for the default run (about 10 s) and for long runs by hand.
    timeout = 120 + 2 * live_examples()

    def setUp(self) -> None:
        if not HAVE_SCHEMATHESIS:
            raise SkipTest(NO_SCHEMATHESIS)

    def harmless_path(self, work: str) -> str:
        """
        A directory holding only L{HARMLESS_PROGRAMS}, to be the server's
        (and so every workload's) C{PATH}.
        """
        directory = os.path.join(work, "bin")
        os.makedirs(directory)
        for name in HARMLESS_PROGRAMS:
            for candidate in ("/usr/bin", "/bin"):
                target = os.path.join(candidate, name)
                if os.path.exists(target):
                    os.symlink(target, os.path.join(directory, name))
                    break
        return directory

    def test_hooks_never_follow(self) -> None:
        """
        The hooks of the live run turn C{follow=true} into C{follow=false}
        and leave every other query alone.
        """
        import types
        from unittest import mock

        registered: Dict[str, Any] = {}
        stub = types.ModuleType("schemathesis")
        stub.hook = lambda function: registered.setdefault(function.__name__, function)  # type: ignore[attr-defined]
        with mock.patch.dict(sys.modules, {"schemathesis": stub}):
            exec(compile(LIVE_HOOKS, "live_hooks.py", "exec"), {})
        before_call = registered["before_call"]
        for query, sent in (
            ({"follow": "true", "offset": 3}, {"follow": "false", "offset": 3}),
            ({"follow": True}, {"follow": "false"}),
            ({"follow": "false"}, {"follow": "false"}),
            ({"follow": "yes"}, {"follow": "yes"}),
            ({"wait_ms": 5}, {"wait_ms": 5}),
            (None, None),
        ):
            case = types.SimpleNamespace(query=copy.deepcopy(query))
            before_call(None, case, {})
            self.assertEqual(case.query, sent)

    @defer.inlineCallbacks
    def test_no_server_error_no_schema_violation(self) -> Any:
        """
        A few hundred generated requests (examples, coverage, fuzzing and
        stateful phases) against a server with a one-task capacity, a small
        queue and a tenant quota: no 5xx, every status documented, every
        body and content type as documented, every schema-breaking request
        refused; and the server logs no error meanwhile.  A failure prints
        schemathesis's report: each failing request, its response and the
        check it broke, with a C{curl} line to reproduce it.
        """
        yield defer.ensureDeferred(self.run_live())

    async def run_live(self) -> None:
        from twisted.internet import reactor

        from tests.serverfixture import (
            ServerProcess,
            clean_environ,
            kill_leftovers,
            remove_task_cgroups,
            run_process,
        )

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        server = ServerProcess(
            reactor,
            os.path.join(work, "data"),
            args=[
                "--max-running-tasks",
                "1",
                "--max-queued-tasks",
                "8",
                "--termination-grace-ms",
                "200",
                "--capacity-memory-bytes",
                str(4 << 30),
                "--capacity-pids",
                "512",
                "--tenant-quota",
                "alice=slots:1,memory:1073741824,pids:64",
            ],
            env=clean_environ({"PATH": self.harmless_path(work)}),
        )

        async def stop() -> None:
            await server.stop()
            await kill_leftovers(reactor, server.data_dir)
            tasks = os.path.join(server.data_dir, "tasks")
            for task_id in os.listdir(tasks) if os.path.isdir(tasks) else ():
                remove_task_cgroups(task_id)

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        await server.start()

        schema_path = os.path.join(work, "openapi.json")
        with open(schema_path, "w", encoding="utf-8") as f:
            json.dump(openapi.document(api.ROUTES), f)
        config_path = os.path.join(work, "schemathesis.toml")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(live_config())
        examples = live_examples()
        argv = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            config_path,
            "run",
            schema_path,
            "--url",
            server.url,
            "--max-examples",
            str(examples),
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
            "--report-dir",
            os.path.join(work, "report"),
        ]
        seed = os.environ.get(SEED_VARIABLE) or (None if os.environ.get(EXAMPLES_VARIABLE) else DEFAULT_SEED)
        if seed is not None:
            argv += ["--seed", seed]
        hooks = os.path.join(work, "live_hooks.py")
        with open(hooks, "w", encoding="utf-8") as f:
            f.write(LIVE_HOOKS)
        env = clean_environ({"NO_COLOR": "1", "COLUMNS": "120", "SCHEMATHESIS_HOOKS": hooks})
        out, err, rc = await run_process(reactor, argv, env, timeout=self.timeout - 30, cwd=work)
        report = f"schemathesis exited {rc}\n{out}\n{err}"
        with open(os.path.join(work, "schemathesis.txt"), "w", encoding="utf-8") as f:
            f.write(report)
        self.assertEqual(rc, 0, report)
        generated = re.search(r"(\d+) generated", out)
        self.assertIsNotNone(generated, report)
        assert generated is not None
        self.assertGreaterEqual(int(generated.group(1)), min(200, 8 * examples), report)
        counts = re.search(r"(\d+) generated, (\d+) passed", out)
        self.assertIsNotNone(counts, report)
        assert counts is not None
        self.assertEqual(counts.group(1), counts.group(2), report)
        client = server.client(self)
        reply = await client.get("/healthz")
        self.assertEqual(reply.code, 200, server.log_text())
        self.assertEqual(logged_errors(server.log_text()), [])


def logged_errors(log: str) -> List[str]:
    """
    The lines of a server log (JSON lines) at level
    C{ERROR} or above, or that are not JSON at all (a traceback).
    """
    found = []
    for line in log.splitlines():
        try:
            level = json.loads(line).get("level", "")
        except (ValueError, AttributeError):
            found.append(line)
            continue
        if level in ("ERROR", "CRITICAL"):
            found.append(line)
    return found
