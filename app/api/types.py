"""Reusable annotated field types for request models.

Integers (vectors, offsets, raw register values, ids) are accepted as JSON integers or as
"0x…" hex strings. Booleans are never integers, even though Python says True == 1.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from app.engine import flags as F
from app.engine import rte as R
from app.engine.ints import HEX_PATTERN, int_from_text

__all__ = ["HEX_PATTERN", "int_or_hex"]


def shown(value: Any) -> str:
    """A value as an error message quotes it (pydantic fills a template's {name} with str(),
    so the repr is made here), cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def int_or_hex(value: Any) -> Any:
    """Before-validator: turn a "0x…" string into an int; refuse booleans outright. Anything
    else is left to the (strict) int validator that follows."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_not_bool", "booleans are not accepted as integers")
    if isinstance(value, str):
        n = int_from_text(value)
        if n is None:
            raise PydanticCustomError(
                "int_or_hex", 'expected a JSON integer or a "0x…" hex string, got {value}',
                {"value": shown(value)},
            )
        return n
    return value


def int_schema(lo: int, hi: int) -> WithJsonSchema:
    # Bounds above 2**53 are not exact as JSON numbers (and FastAPI's OpenAPI model turns
    # them into floats): state them in words instead.
    integer: dict[str, Any] = {"type": "integer", "minimum": lo}
    if hi < 1 << 53:
        integer["maximum"] = hi
    else:
        integer["description"] = f"at most 2**{hi.bit_length()} - 1"
    return WithJsonSchema({
        "anyOf": [integer, {"type": "string", "pattern": HEX_PATTERN}],
    })


_V = BeforeValidator(int_or_hex)

U1 = Annotated[int, _V, Field(ge=0, le=1), int_schema(0, 1)]
U8 = Annotated[int, _V, Field(ge=0, le=0xFF), int_schema(0, 0xFF)]
U32 = Annotated[int, _V, Field(ge=0, le=0xFFFFFFFF), int_schema(0, 0xFFFFFFFF)]
U64 = Annotated[int, _V, Field(ge=0, le=(1 << 64) - 1), int_schema(0, (1 << 64) - 1)]
UInt = Annotated[int, _V, Field(ge=0, le=(1 << 63) - 1), int_schema(0, (1 << 63) - 1)]
Vector = U8
IrqSource = Annotated[int, _V, Field(ge=0, le=63), int_schema(0, 63)]
VcpuIndex = Annotated[int, _V, Field(ge=0, le=0xFFFFFFFF), int_schema(0, 0xFFFFFFFF)]
VcpuCount = Annotated[int, _V, Field(ge=1, le=4096), int_schema(1, 4096)]
IoapicOffset = U8


def _access_size(value: int) -> int:
    if value not in (1, 2, 4, 8):
        raise PydanticCustomError("access_size", "size must be 1, 2, 4 or 8")
    return value


AccessSize = Annotated[
    int, _V, AfterValidator(_access_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "enum": [1, 2, 4, 8]},
                              {"type": "string", "pattern": HEX_PATTERN}]}),
]


def _delivery_mode(value: Any) -> Any:
    if isinstance(value, str) and value in R.DELIVERY_MODES:
        return R.DELIVERY_MODES[value]
    if isinstance(value, str):
        raise PydanticCustomError(
            "delivery_mode", "delivery_mode must be one of {names} or an integer 0..7",
            {"names": ", ".join(R.DELIVERY_MODES)},
        )
    return int_or_hex(value)


DeliveryMode = Annotated[
    int, BeforeValidator(_delivery_mode), Field(ge=0, le=7),
    WithJsonSchema({"anyOf": [
        {"type": "string", "enum": list(R.DELIVERY_MODES)},
        {"type": "integer", "minimum": 0, "maximum": 7},
    ], "description": "fixed, lowest, smi, nmi, init, extint, or the raw 3-bit value"}),
]
"""A delivery mode by name, or as the raw 3-bit field; validated to the 3-bit int."""


def _profile(value: str) -> str:
    if value not in F.PRESETS:
        raise PydanticCustomError(
            "unknown_profile", "unknown profile {value}; known: {known}",
            {"value": shown(value), "known": ", ".join(F.PRESETS)},
        )
    return value


ProfileName = Annotated[
    str, AfterValidator(_profile),
    WithJsonSchema({"type": "string", "enum": list(F.PRESETS)}),
]


def _flag(value: str) -> str:
    if value not in F.FLAGS:
        raise PydanticCustomError(
            "unknown_flag", "unknown behaviour flag {value}; see GET /v1/profiles",
            {"value": shown(value)},
        )
    return value


FlagName = Annotated[
    str, AfterValidator(_flag), WithJsonSchema({"type": "string", "enum": list(F.FLAGS)}),
]

VM_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
VmId = Annotated[str, StringConstraints(pattern=VM_ID_PATTERN)]
