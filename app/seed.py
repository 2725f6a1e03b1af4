"""Load a small demo catalogue: `python -m app.seed`.

Runs through the domain services, like the API would. It loads nothing when the products
table already has rows, so running it again is harmless.

    products  Coffee beans 1kg (15000, stock 100), Wireless earbuds (89000, stock 50),
              Limited edition mug (9000, stock 2: a second order of 3 runs out)
    balances  user 1: 100000, user 2: 300 (too little for most orders)
    coupon    "Welcome 500" (discount 500, 100 of them), one issued to user 1
"""

from __future__ import annotations

from app.bootstrap import Services
from config.settings import Settings

SEEDED = ("products", "balances", "coupons")

PRODUCTS = [
    ("Coffee beans 1kg", 15000, 100),
    ("Wireless earbuds", 89000, 50),
    ("Limited edition mug", 9000, 2),
]
BALANCES = {1: 100000, 2: 300}
COUPON = ("Welcome 500", 500, 100)
COUPON_HOLDER = 1


def seed(rt: Services) -> bool:
    """Load the catalogue unless products exist; True if it loaded anything."""
    if rt.products.list():
        return False
    for name, price, stock in PRODUCTS:
        product = rt.products.create(name, price, stock)
        print(
            f"product  #{product['id']} {product['name']}: price {product['price']}, "
            f"stock {product['stock']}"
        )
    for user_id, amount in BALANCES.items():
        account = rt.balances.charge(user_id, amount)
        print(f"balance  user {account['user_id']}: {account['balance']}")
    name, discount, quantity = COUPON
    coupon = rt.coupons.create(name, discount, quantity)
    print(
        f"coupon   #{coupon['id']} {coupon['name']}: discount {coupon['discount']}, "
        f"quantity {coupon['quantity']}"
    )
    # Issued the way a user's request is (first come first served), without the queue.
    request = rt.issue_requests.request(coupon["id"], COUPON_HOLDER)
    issued = rt.issue_requests.process(request["request_id"])
    print(
        f"issued   coupon #{coupon['id']} to user {COUPON_HOLDER}: {issued['status']}, "
        f"issued_coupon_id {issued['issued_coupon_id']}"
    )
    return True


def main() -> None:
    rt = Services(Settings.from_env(), SEEDED)
    try:
        if not seed(rt):
            print("demo catalogue: products already present, nothing loaded")
    finally:
        rt.dispose()


if __name__ == "__main__":
    main()
