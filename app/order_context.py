"""What every step of the order saga receives: the order as it was quoted when placed.

Prices and the coupon's discount are quoted by POST /orders through the product and
coupon services' interfaces, so no step reads another service's database."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

WORKFLOW = "order"


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True)
    product_id: int
    quantity: int
    unit_price: int


class OrderContext(BaseModel):
    model_config = ConfigDict(frozen=True)
    order_id: int
    user_id: int
    items: list[OrderLine]
    issued_coupon_id: int | None = None
    total: int
    discount: int
    paid: int


def saga_id_of(order_id: int) -> str:
    return f"{WORKFLOW}-{order_id}"


def order_id_of(saga_id: str) -> int:
    return int(saga_id.removeprefix(f"{WORKFLOW}-"))
