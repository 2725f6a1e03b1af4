"""Request bodies and query strings, validated strictly: "5" is not a number, true is not
1, and "١٢" (Arabic-Indic digits) is not 12."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_ID = 2**31 - 1
Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
Money = Annotated[int, Field(strict=True, ge=1, le=10**9)]

# Characters a name may not hold: they are invisible or reorder the text around them, so a
# name would not read as what it is (a "bidi override" spoofs a product name), and NUL is
# refused by PostgreSQL outright.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def clean_name(value: str) -> str:
    """Refuse control characters (NUL included), lone surrogates and bidi controls, and a
    name with nothing visible in it (zero-width characters only); normalise to NFC and
    trim the whitespace around it."""
    for char in value:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") or char in BIDI_CONTROLS:
            raise ValueError(f"the name holds a control character (U+{ord(char):04X})")
    value = unicodedata.normalize("NFC", value).strip()
    if not any(unicodedata.category(c)[0] not in "CZM" for c in value):
        raise ValueError("the name has no visible character")
    if len(value) > 200:
        raise ValueError("the name is longer than 200 characters")
    return value


Name = Annotated[str, Field(strict=True, min_length=1, max_length=400), AfterValidator(clean_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewProduct(Strict):
    name: Name
    price: Money
    stock: Annotated[int, Field(strict=True, ge=0, le=10**9)]


class Charge(Strict):
    amount: Money


class NewCoupon(Strict):
    name: Name
    discount: Money
    quantity: Annotated[int, Field(strict=True, ge=1, le=10**7)]


class IssueCoupon(Strict):
    # The caller is the user; naming another one is refused (403) by the route.
    user_id: Id | None = None


class OrderItem(Strict):
    product_id: Id
    quantity: Annotated[int, Field(strict=True, ge=1, le=10**6)]


class OrderQuery(Strict):
    status: (
        Literal[
            "PENDING",
            "COMPLETED",
            "COMPENSATING",
            "FAILED",
            "NEEDS_ATTENTION",
            "REFUNDING",
            "REFUNDED",
        ]
        | None
    ) = None
    # A query string is text: ASCII digits only, converted here.
    limit: Annotated[str, Field(pattern=r"^[0-9]{1,3}$")] = "50"

    @field_validator("limit")
    @classmethod
    def between_1_and_500(cls, limit: str) -> str:
        if not 1 <= int(limit) <= 500:
            raise ValueError("limit must be from 1 to 500")
        return limit


class NewOrder(Strict):
    # The caller is the user; naming another one is refused (403) by the route.
    user_id: Id | None = None
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=100)]
    issued_coupon_id: Id | None = None

    @field_validator("items")
    @classmethod
    def products_listed_once(cls, items: list[OrderItem]) -> list[OrderItem]:
        ids = [item.product_id for item in items]
        if len(ids) != len(set(ids)):
            raise ValueError("each product may appear only once; add up the quantities")
        return items
