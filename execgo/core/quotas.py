# -*- test-case-name: tests.test_quotas -*-
"""
Tenant quotas as the operator writes them: C{--tenant-quota} values
parsed into amounts of the ledger's resources (L{Reservation}).  Pure.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Tuple

from execgo.core.constants import UINT64_MAX
from execgo.core.errors import InvalidInput
from execgo.core.reservation import Reservation

# Rust's u64 parser, which the original implementation used, accepts one
# leading "+"; nothing else but ASCII digits (no "_", no Unicode digits).
_UNSIGNED = re.compile(r"\+?[0-9]+\Z")
_QUOTA_KEYS = ("slots", "memory", "pids")


def parse_tenant_quota(spec: str) -> Tuple[str, Reservation]:
    """
    Parse one C{--tenant-quota} value, C{NAME=KEY:VALUE[,KEY:VALUE...]}:
    C{KEY} is C{slots} (required), C{memory} or C{pids}, each C{VALUE} an
    unsigned 64-bit integer; blank items are skipped and a repeated key
    keeps its last value.

    @raise InvalidInput: when the specification breaks any rule; the detail
        quotes the specification.
    """
    name, sep, rest = spec.partition("=")
    if not sep:
        raise InvalidInput(
            f"tenant quota {spec!r} must have the form NAME=KEY:VALUE[,KEY:VALUE...]"
        )
    name = name.strip()
    if not name:
        raise InvalidInput(f"tenant quota {spec!r} has an empty tenant name")
    values: Dict[str, int] = {}
    for raw_item in rest.split(","):
        item = raw_item.strip()
        if not item:
            continue
        key, sep, raw_value = item.partition(":")
        if not sep:
            raise InvalidInput(f"tenant quota {spec!r}: item {item!r} must be KEY:VALUE")
        key = key.strip()
        if key not in _QUOTA_KEYS:
            raise InvalidInput(
                f"tenant quota {spec!r}: unknown key {key!r}"
                " (expected slots, memory or pids)"
            )
        value = raw_value.strip()
        if not _UNSIGNED.match(value) or int(value) > UINT64_MAX:
            raise InvalidInput(
                f"tenant quota {spec!r}: {key} must be an unsigned 64-bit integer,"
                f" got {value!r}"
            )
        values[key] = int(value)
    if "slots" not in values:
        raise InvalidInput(f"tenant quota {spec!r} must set slots")
    return name, Reservation(
        task_slots=values["slots"],
        memory_bytes=values.get("memory"),
        pids=values.get("pids"),
    )


def parse_tenant_quotas(specs: Iterable[str]) -> Dict[str, Reservation]:
    """
    Parse every C{--tenant-quota} value; a repeated tenant name keeps the
    last specification.

    @raise InvalidInput: on the first invalid specification.
    """
    quotas: Dict[str, Reservation] = {}
    for spec in specs:
        name, quota = parse_tenant_quota(spec)
        quotas[name] = quota
    return quotas
