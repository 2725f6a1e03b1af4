"""Request bodies, validated strictly: "5" is not a number and true is not 1."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_ID = 2**31 - 1
Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
Money = Annotated[int, Field(strict=True, ge=1, le=10**9)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


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
    user_id: Id


class OrderItem(Strict):
    product_id: Id
    quantity: Annotated[int, Field(strict=True, ge=1, le=10**6)]


class OrderQuery(Strict):
    status: Literal["PENDING", "COMPLETED", "COMPENSATING", "FAILED", "NEEDS_ATTENTION"] | None = (
        None
    )
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class NewOrder(Strict):
    user_id: Id
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=100)]
    issued_coupon_id: Id | None = None

    @field_validator("items")
    @classmethod
    def products_listed_once(cls, items: list[OrderItem]) -> list[OrderItem]:
        ids = [item.product_id for item in items]
        if len(ids) != len(set(ids)):
            raise ValueError("each product may appear only once; add up the quantities")
        return items
