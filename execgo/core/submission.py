# -*- test-case-name: tests.test_validation -*-
"""
The untrusted-input layer of C{POST /api/v1/tasks}: request bytes become a
validated L{SubmitRequest} (L{parse_submit}) in three steps, each its own
module so a caller can stop where it needs to (the CLI decodes but does
not validate):

  1. L{execgo.core.strictjson}: the 2 MiB size limit, UTF-8 and JSON
     syntax.
  2. L{execgo.core.decoding}: the schema of a C{SubmitTaskRequest}, with
     every default filled in.
  3. L{execgo.core.validation}: the semantic rules, one group of fields
     after the other, stopping at the first failure.

A batch (C{POST /api/v1/tasks/batch}) takes the first step once for its
whole body (L{parse_batch}), then the other two for each item as for a
body of its own (L{check_submit}).

The 2^63-1 output bound and the server's preview ceiling
(L{execgo.core.validation.check_output_limits}) and the chroot roots
(L{execgo.core.rootfs.check_rootfs}) are checked later in the submit flow,
after the capacity, quota and queue checks.

Whatever the input, these raise nothing but
L{execgo.core.errors.InvalidInput} (or its subclass
L{execgo.core.errors.PayloadTooLarge}); the API answers every one of those with a
C{400} (C{413}) and the error envelope, code C{invalid_input}, whatever
the request's C{Content-Type}.  Details name the offending field by its
path, e.g. C{execution.args[2]: expected a string, got an integer}.

Standard library, C{attrs} (through the models) and the
L{execgo.core.errors} hierarchy only, so the CLI can use it without
Twisted.
"""

from __future__ import annotations

from typing import Any, List

from execgo.core.decoding import decode_batch, decode_submit
from execgo.core.models import SubmitRequest
from execgo.core.strictjson import parse_json_body
from execgo.core.validation import validate_submit


def parse_submit(body: bytes) -> SubmitRequest:
    """
    Parse, decode and validate a submit body: L{parse_json_body},
    L{decode_submit} and L{validate_submit} (but not the later checks of
    the submit flow).

    @raise PayloadTooLarge: if the body is over
        L{execgo.core.strictjson.MAX_BODY_BYTES}.
    @raise InvalidInput: for any other problem with the body.
    """
    return check_submit(parse_json_body(body))


def check_submit(value: Any) -> SubmitRequest:
    """
    Decode and validate one parsed submission: L{decode_submit} and
    L{validate_submit}, as L{parse_submit} does for a body.

    @param value: a JSON value as L{parse_json_body} returns it.
    @raise InvalidInput: for any problem with it.
    """
    request = decode_submit(value)
    validate_submit(request)
    return request


def parse_batch(body: bytes) -> List[Any]:
    """
    Parse a batch body and decode its envelope (L{decode_batch}), under
    the size bound of a single submission.

    @return: its items, each for L{check_submit}.
    @raise PayloadTooLarge: if the body is over
        L{execgo.core.strictjson.MAX_BODY_BYTES}.
    @raise InvalidInput: for any other problem with the body as a whole.
    """
    return decode_batch(parse_json_body(body))
