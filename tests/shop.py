"""A customer's-eye helper over the HTTP API, plus the invariants every test checks."""

from __future__ import annotations

import requests
from sqlalchemy import select

from app.order_context import saga_id_of
from app.schema import METADATA
from app.services import balances, coupons, products
from sagaflow._ledger import APPLIED
from tests.support import wait_for

FINAL = ("COMPLETED", "FAILED", "NEEDS_ATTENTION")


def settled(order: dict) -> bool:
    """Nothing of the saga is still moving: no work running or waiting for its retry, and
    a completed order's publication ran (or was parked)."""
    moving = {"running", "retrying"}
    if order["status"] == "COMPLETED":
        moving.add("pending")
    return not any(s["status"] in moving for s in order["steps"])


class HttpClient:
    """What Shop calls on Flask's test client, over real HTTP to an API process (gunicorn):
    a shop that orders through the build that process runs."""

    def __init__(self, base_url: str):
        self.base_url, self.session = base_url, requests.Session()

    def get(self, path: str, headers=None) -> _Answer:
        return _Answer(self.session.get(self.base_url + path, headers=headers, timeout=30))

    def post(self, path: str, json=None, headers=None) -> _Answer:
        return _Answer(
            self.session.post(self.base_url + path, json=json, headers=headers, timeout=30)
        )

    def close(self) -> None:
        self.session.close()


class _Answer:
    """A requests response read the way Flask's test response is."""

    def __init__(self, response: requests.Response):
        self.status_code, self.headers, self._response = (
            response.status_code,
            response.headers,
            response,
        )

    def get_json(self):
        return self._response.json()

    def get_data(self, as_text: bool = False):
        return self._response.text if as_text else self._response.content


class Shop:
    """Acts as each role would: an admin sets up products, coupons and balances, each
    customer orders as itself, an operator reads any order."""

    def __init__(self, client, rt, user_ids, credentials):
        self.client, self.rt, self._user_ids = client, rt, user_ids
        self.credentials = credentials

    def new_user(self, balance: int = 0) -> int:
        user_id = next(self._user_ids)
        if balance:
            self.charge(user_id, balance)
        return user_id

    def charge(self, user_id: int, amount: int) -> dict:
        return self.ok(
            self.client.post(
                f"/balances/{user_id}/charge",
                json={"amount": amount},
                headers=self.credentials.admin,
            )
        )

    def product(self, stock: int = 10, price: int = 100) -> int:
        return self.ok(
            self.client.post(
                "/products",
                json={"name": "widget", "price": price, "stock": stock},
                headers=self.credentials.admin,
            ),
            201,
        )["id"]

    def coupon_for(self, user_id: int, discount: int = 30) -> int:
        """Issue one coupon to the user through the real issue flow; the issued coupon id."""
        coupon = self.ok(
            self.client.post(
                "/coupons",
                json={"name": "promo", "discount": discount, "quantity": 1},
                headers=self.credentials.admin,
            ),
            201,
        )
        req = self.ok(
            self.client.post(
                f"/coupons/{coupon['id']}/issue", headers=self.credentials.customer(user_id)
            ),
            202,
        )
        # A worker on a loaded machine may still be busy with an earlier test's retries.
        done = wait_for(lambda: self._issued(req["request_id"], user_id), 60, what="coupon issue")
        return done["issued_coupon_id"]

    def _issued(self, request_id, user_id):
        body = self.client.get(
            f"/coupons/requests/{request_id}", headers=self.credentials.customer(user_id)
        ).get_json()
        return body if body["status"] != "PENDING" else None

    def order(
        self,
        user_id: int,
        product_id: int,
        quantity: int = 1,
        issued_coupon_id: int | None = None,
        key: str | None = None,
    ) -> int:
        headers = {
            **self.credentials.customer(user_id),
            **({"Idempotency-Key": key} if key else {}),
        }
        body = {
            "user_id": user_id,
            "items": [{"product_id": product_id, "quantity": quantity}],
            "issued_coupon_id": issued_coupon_id,
        }
        return self.ok(self.client.post("/orders", json=body, headers=headers), 202)["order_id"]

    def get_order(self, order_id: int) -> dict:
        return self.ok(self.client.get(f"/orders/{order_id}", headers=self.credentials.operator))

    def wait_order(
        self, order_id: int, statuses=FINAL, timeout: float = 60, settle: bool = True
    ) -> dict:
        """Wait for one of `statuses`; a COMPLETED or FAILED order also for its saga log to
        settle: the order's status commits before the step that set it is logged as done
        (cancel_order), and publication runs after the order completed."""

        def reached():
            order = self.get_order(order_id)
            if order["status"] not in statuses:
                return None
            if settle and order["status"] in ("COMPLETED", "FAILED") and not settled(order):
                return None
            return order

        return wait_for(reached, timeout, what=f"order {order_id} to reach {statuses}")

    def refund(self, order_id: int, user_id: int, status: int = 202):
        """The customer asks for a refund of its order; the answer (and its headers)."""
        response = self.client.post(
            f"/orders/{order_id}/refund", headers=self.credentials.customer(user_id)
        )
        return self.ok(response, status), response.headers

    def wait_refund(self, order_id: int, statuses=FINAL, timeout: float = 60) -> dict:
        """Wait for the order's refund saga to reach one of `statuses` with nothing of it
        still moving; the order, with its `refund`."""

        def reached():
            order = self.get_order(order_id)
            refund = order["refund"]
            if refund is None or refund["status"] not in statuses or not settled(refund):
                return None
            # Read again: the answer reads the order's row and the refund's saga one after
            # the other, so the row may predate the commit that settled the refund (and,
            # with it, the order's status): a row read after it has been seen is not.
            return self.get_order(order_id)

        return wait_for(reached, timeout, what=f"refund of order {order_id} to reach {statuses}")

    def stock(self, product_id: int) -> int:
        return self.ok(self.client.get(f"/products/{product_id}"))["stock"]

    def balance(self, user_id: int) -> int:
        return self.ok(self.client.get(f"/balances/{user_id}", headers=self.credentials.admin))[
            "balance"
        ]

    @staticmethod
    def ok(response, status: int = 200) -> dict:
        assert response.status_code == status, (response.status_code, response.get_data(True))
        return response.get_json()

    # --- reading the services' own records ------------------------------------------

    def ledger(self, service_module, db_name: str, order_id: int) -> dict[str, str]:
        ledger = service_module.Ledger
        with self.rt.databases[db_name].read() as session:
            rows = session.scalars(select(ledger).where(ledger.saga_id == saga_id_of(order_id)))
            return {row.step: row.status for row in rows}

    def issued_coupon(self, issued_coupon_id: int) -> dict:
        return self.rt.issued_coupons.get(issued_coupon_id)

    def published(self, order_id: int) -> int:
        return self.rt.dataplatform.count(order_id)

    def streamed(self, order_id: int) -> int:
        """Entries of the order on the data platform's stream (put there by publish_order,
        or the relay)."""
        return sum(
            1
            for _, fields in self.rt.redis.xrange("dataplatform.orders")
            if fields[b"order_id"] == str(order_id).encode()
        )

    def wait_streamed(self, order_id: int, timeout: float = 60) -> int:
        wait_for(lambda: self.streamed(order_id), timeout, what=f"order {order_id} streamed")
        return self.streamed(order_id)

    def snapshot(self) -> dict:
        """Every row of every service's database, to prove a request changed nothing."""
        tables = {}
        for name, metadatas in METADATA.items():
            with self.rt.databases[name].read() as session:
                for table in (t for metadata in metadatas for t in metadata.sorted_tables):
                    columns = table.c
                    if table.name == "sagaflow_outbox":
                        # Which messages exist, not how far their delivery has got: an
                        # earlier order's event may be sent by the relay meanwhile.
                        columns = [table.c.id, table.c.key, table.c.kind, table.c.payload]
                    rows = session.execute(select(*columns)).all()
                    tables[f"{name}.{table.name}"] = sorted(map(tuple, rows), key=repr)
        return tables

    def check_invariants(
        self,
        order_ids: list[int],
        product_id: int,
        initial_stock: int,
        user_id: int,
        charged: int,
        issued_coupon_id: int | None = None,
    ):
        """Stock and money are conserved, and only what an order still holds is taken."""
        held_units, held_money = 0, 0
        coupon_holders = []
        for order_id in order_ids:
            order = self.get_order(order_id)
            stock_ledger = self.ledger(products, "products", order_id)
            money_ledger = self.ledger(balances, "balances", order_id)
            coupon_ledger = self.ledger(coupons, "coupons", order_id)
            holds_stock = stock_ledger.get("decrease_stock") == APPLIED
            holds_money = money_ledger.get("use_balance") == APPLIED
            if order["status"] == "COMPLETED":
                assert holds_stock and holds_money, (order_id, stock_ledger, money_ledger)
            if order["status"] == "FAILED":
                assert not holds_stock and not holds_money, (order_id, stock_ledger, money_ledger)
                assert coupon_ledger.get("use_coupon") != APPLIED
            if holds_stock:
                held_units += sum(
                    i["quantity"] for i in order["items"] if i["product_id"] == product_id
                )
            if holds_money:
                held_money += order["to_pay"]
            if coupon_ledger.get("use_coupon") == APPLIED:
                coupon_holders.append((order_id, order["status"]))
            expected_records = (
                1
                if order["status"] == "COMPLETED"
                and any(
                    s["name"] == "publish_order" and s["status"] == "succeeded"
                    for s in order["steps"]
                )
                else 0
            )
            assert self.published(order_id) == expected_records, order_id
        assert self.stock(product_id) + held_units == initial_stock
        assert self.balance(user_id) + held_money == charged
        if issued_coupon_id is not None:
            coupon = self.issued_coupon(issued_coupon_id)
            assert len(coupon_holders) <= 1
            if coupon["status"] == "USED":
                assert [o for o, _ in coupon_holders] == [coupon["order_id"]]
                assert coupon_holders[0][1] in ("COMPLETED", "NEEDS_ATTENTION")
            else:
                assert coupon_holders == []
