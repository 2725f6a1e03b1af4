"""A step on a new service is the step, its compensation, the service's module and its
tables, nothing else (issue 18): the tests' own workflow is the order saga with one more
step, `reserve_shipping` (undone by `cancel_shipping`) on a sixth service, `shipping`,
whose module is tests/shipping_service.py. Everything here is wired from the list
`services_of` derives from that workflow, the way the shop's processes are wired from
app.workflows.SERVICES: each service's database, tables, outbox and interfaces.

In-process and in seconds: one SQLite database per service, Redis in memory
(`memory_redis()`), `SyncDispatcher` instead of Celery. No subprocess, no redis-server.

The step is put before use_coupon rather than after it (where it would be the pivot), so
that the step after it can refuse and its compensation has a real shipment to cancel; a
refusal at reserve_shipping itself is shown too.

What the shop derives from its list and can be given this workflow's list: the settings
(every `<SERVICE>_DATABASE_URL`), the database env the tests write (tests.support),
the Celery routes (sagaflow.celery_app.routes) and the home (home_of). What cannot be,
without changing app code: app.bootstrap.Services and app.schema read the module-level
app.workflows.SERVICES and find each module under app/services/ (and its Alembic history
under migrations/versions/<name>/), so they serve exactly the shop's own workflows;
this file does their part itself, from its own list (`_World`), the same way.

It takes the shop to have no shipping service of its own: were one added to app/, the
tests' would need another name (its step names would clash with the shop's).
"""

from __future__ import annotations

import dataclasses
import time
from types import ModuleType, SimpleNamespace

import pytest
from sqlalchemy import select

from app import services as service_modules
from app.order_context import OrderContext, saga_id_of
from app.order_saga import ORDER, ORDER_HOOKS
from app.services.coupons import UNUSED, USED
from app.workflows import HOOKS, SERVICES, WORKFLOWS
from config.settings import SAGA_MODES
from config.settings import Settings as ShopSettings
from sagaflow import (
    Compensation,
    Database,
    Hooks,
    Phase,
    Runtime,
    SagaBase,
    SagaStatus,
    Settings,
    Step,
    home_of,
    services_of,
)
from sagaflow._choreography import CHOREOGRAPHY
from sagaflow._ledger import APPLIED, NEVER_APPLIED
from sagaflow.celery_app import routes
from sagaflow.testing import SyncDispatcher, memory_redis
from tests import shipping_service
from tests.support import database_env

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules


# --- the tests' own workflow: the order saga plus a step on a sixth service -------------


def reserve_shipping(services, ctx: OrderContext):
    units = sum(item.quantity for item in ctx.items)
    services.shipping.reserve_shipping(saga_id_of(ctx.order_id), ctx.order_id, ctx.user_id, units)
    return ctx, f"shipment of {units} units reserved"


def cancel_shipping(services, saga_id: str) -> str:
    return services.shipping.cancel_shipping(saga_id)


RESERVE_SHIPPING = Step(
    "reserve_shipping",
    "shipping",
    reserve_shipping,
    Compensation("cancel_shipping", cancel_shipping, event="ShippingCancelled"),
    event="ShippingReserved",
    failure_event="ShippingRefused",
)
_AT = ORDER.step_names.index("use_coupon")
SHIPPED_ORDER = dataclasses.replace(
    ORDER, steps=[*ORDER.steps[:_AT], RESERVE_SHIPPING, *ORDER.steps[_AT:]]
)
# The shop's workflows with this order saga in place of its own (the refund unchanged).
SIX_WORKFLOWS = {**WORKFLOWS, SHIPPED_ORDER.name: SHIPPED_ORDER}
SIX_SERVICES = services_of(SIX_WORKFLOWS.values())


def module_of(service: str) -> ModuleType:
    """A service's module: the shop's (app/services/<name>.py), or the tests' shipping."""
    return shipping_service if service == "shipping" else service_modules.module(service)


class _World:
    """The processes of a whole shop in one: every service the workflows need on its own
    SQLite database, built from the derived list the way bootstrap builds the shop's
    (each module's Base, Outbox and INTERFACES), the runtime over all of them."""

    def __init__(self, tmp_path, mode: str, workflows=SIX_WORKFLOWS):
        self.workflows = workflows
        self.services_list = services_of(workflows.values())
        home = home_of(workflows)
        self.databases: dict[str, Database] = {}
        for service in self.services_list:
            db = Database(f"sqlite:///{tmp_path / f'{service}.db'}", create=True)
            # create_all from each module's Base, not Alembic: the tests' shipping has no
            # history under migrations/versions/ (see tests/shipping_service.py), and it
            # keeps this in-process (the shop's histories run in the end-to-end stacks).
            module_of(service).Base.metadata.create_all(db.engine)
            if service == home:
                SagaBase.metadata.create_all(db.engine)
            self.databases[service] = db
        self.services = SimpleNamespace(
            **{
                name: interface(self.databases[service])
                for service in self.services_list
                for name, interface in module_of(service).INTERFACES.items()
            }
        )
        # What the compensations said, in the order the saga log recorded them.
        self.undone: list[tuple[str, str]] = []
        order_hooks = Hooks(
            on_status=list(ORDER_HOOKS.on_status), on_step=[*ORDER_HOOKS.on_step, self._record]
        )
        self.dispatcher = SyncDispatcher(
            max_retries=2, max_attempts=2, chained=mode != CHOREOGRAPHY
        )
        self.runtime = Runtime(
            workflows,
            databases=self.databases,
            outboxes={s: module_of(s).Outbox for s in self.services_list},
            redis=memory_redis(),
            services=self.services,
            dispatcher=self.dispatcher,
            settings=Settings(saga_mode=mode),
            hooks={**HOOKS, ORDER.name: order_hooks},
        )
        self.dispatcher.runner = self.runtime.runner
        self.log = self.runtime.saga_log

    def _record(self, session, instance, event) -> None:
        wf = self.workflows[ORDER.name]
        if event.phase == Phase.SUCCEEDED and event.name in wf.compensation_names:
            self.undone.append((event.name, event.detail))

    def dispose(self) -> None:
        for db in self.databases.values():
            db.dispose()

    # --- the shop's records --------------------------------------------------------

    def customer(self, user_id: int, balance: int) -> int:
        self.services.balances.charge(user_id, balance)
        return user_id

    def product(self, stock: int, price: int) -> int:
        return self.services.products.create("parcel test", price, stock)["id"]

    def coupon_for(self, user_id: int, discount: int) -> int:
        coupon = self.services.coupons.create("ten off", discount, quantity=5)
        request = self.services.issue_requests.request(coupon["id"], user_id)
        return self.services.issue_requests.process(request["request_id"])["issued_coupon_id"]

    def order(self, user_id, product_id, quantity, coupon=None, discount=0) -> str:
        """POST /orders in-process: the order and its saga's start in one transaction,
        sent after the commit; then everything it sets off is run."""
        price = self.services.products.prices([product_id])[product_id]
        total = price * quantity
        start = self.runtime.starts.start(self.workflows[ORDER.name])

        def start_saga(session, order_id: int) -> None:
            ctx = OrderContext(
                order_id=order_id,
                user_id=user_id,
                items=[{"product_id": product_id, "quantity": quantity, "unit_price": price}],
                issued_coupon_id=coupon,
                total=total,
                discount=discount,
                paid=total - discount,
            )
            start.write(session, ctx)

        items = [{"product_id": product_id, "quantity": quantity}]
        order, _ = self.services.orders.place(user_id, items, coupon, None, start_saga)
        assert start.send()
        self.dispatcher.drain(self.runtime.projector())
        return saga_id_of(order["order_id"])

    def stock(self, product_id: int) -> int:
        return self.services.products.get(product_id)["stock"]

    def balance(self, user_id: int) -> int:
        return self.services.balances.get(user_id)["balance"]

    def ledgers(self, saga_id: str) -> dict[str, str]:
        """Every service's ledger rows for the saga: step -> status."""
        found = {}
        for service in self.services_list:
            ledger = getattr(module_of(service), "Ledger", None)  # none after the pivot
            if ledger is None:
                continue
            with self.databases[service].read() as session:
                rows = session.scalars(select(ledger).where(ledger.saga_id == saga_id))
                found.update({row.step: row.status for row in rows})
        return found

    def owed(self) -> list:
        """What the stall check would hand to the DLQ an hour from now: nothing is owed."""
        return self.runtime.orchestrator().stall.park_stalled(now=time.time() + 3600)


@pytest.fixture(params=SAGA_MODES)
def world(request, tmp_path):
    """Both ways of running the saga: a chain sent up front, or each service (shipping
    too) announcing the next step through its own outbox."""
    built = _World(tmp_path, request.param)
    yield built
    built.dispose()


# --- (a) the list ----------------------------------------------------------------------


def test_the_sixth_service_is_in_the_list_derived_from_the_workflow():
    assert "shipping" in SIX_SERVICES and "shipping" not in SERVICES
    assert set(SIX_SERVICES) == {*SERVICES, "shipping"}
    # In declaration order: right after the service of the step before it.
    before = ORDER.steps[_AT - 1].queue
    assert SIX_SERVICES.index("shipping") == SIX_SERVICES.index(before) + 1
    # The module is the tests' (the shop has none: app/services/shipping.py is missing).
    assert module_of("shipping") is shipping_service
    with pytest.raises(ValueError, match=r"app/services/shipping\.py is missing"):
        service_modules.module("shipping")


# --- (b) an order through all six services -------------------------------------------


def test_an_order_completes_through_all_six_services_and_ships_once(world):
    user = world.customer(1, balance=1_000)
    product = world.product(stock=10, price=150)
    coupon = world.coupon_for(user, discount=50)

    saga_id = world.order(user, product, quantity=2, coupon=coupon, discount=50)

    timeline = world.log.timeline(saga_id)
    assert timeline["status"] == SagaStatus.COMPLETED
    assert [s["name"] for s in timeline["steps"]] == SHIPPED_ORDER.step_names
    assert all(s["status"] == "succeeded" for s in timeline["steps"]), timeline["steps"]
    # Each of the six services did its part, once.
    order_id = int(saga_id.removeprefix("order-"))
    assert world.services.orders.get(order_id)["status"] == SagaStatus.COMPLETED
    assert (world.stock(product), world.balance(user)) == (8, 750)
    assert world.services.issued_coupons.get(coupon)["status"] == USED
    assert world.services.shipping.shipments(order_id) == [shipping_service.RESERVED]
    assert world.services.dataplatform.count(order_id) == 1
    assert world.ledgers(saga_id)["reserve_shipping"] == APPLIED
    # A redelivered reserve_shipping applies nothing more: still one shipment.
    world.services.shipping.reserve_shipping(saga_id, order_id, user, 2)
    assert world.services.shipping.shipments(order_id) == [shipping_service.RESERVED]
    assert world.undone == [] and world.owed() == []
    assert set(world.runtime.databases) == set(SIX_SERVICES)


# --- (c) turned back, cancel_shipping among the compensations --------------------------


def test_a_refusal_after_the_shipment_cancels_it_among_the_compensations_newest_first(world):
    holder = world.customer(2, balance=100)
    user = world.customer(3, balance=1_000)
    product = world.product(stock=10, price=150)
    # Another customer's coupon: use_coupon, the step after reserve_shipping, refuses it.
    coupon = world.coupon_for(holder, discount=50)

    saga_id = world.order(user, product, quantity=2, coupon=coupon, discount=50)

    timeline = world.log.timeline(saga_id)
    assert (timeline["status"], timeline["failed_step"]) == (SagaStatus.FAILED, "use_coupon")
    assert [name for name, _ in world.undone] == SHIPPED_ORDER.compensations_for("use_coupon")
    assert [name for name, _ in world.undone] == [
        "restore_coupon",
        "cancel_shipping",
        "refund_balance",
        "restore_stock",
        "cancel_order",
    ]
    said = dict(world.undone)
    assert said["restore_coupon"] == NEVER_APPLIED  # the refused step's own: a void
    assert said["cancel_shipping"] == "undone"  # a real shipment, cancelled
    # Nothing held: the stock, the money, the coupon, the shipment are as before.
    order_id = int(saga_id.removeprefix("order-"))
    assert (world.stock(product), world.balance(user)) == (10, 1_000)
    assert world.services.issued_coupons.get(coupon)["status"] == UNUSED
    assert world.services.shipping.shipments(order_id) == [shipping_service.CANCELLED]
    assert APPLIED not in world.ledgers(saga_id).values(), world.ledgers(saga_id)
    assert world.services.orders.get(order_id)["status"] == SagaStatus.FAILED
    assert world.owed() == []


def test_a_refusal_by_the_shipping_service_itself_turns_the_saga_back(world):
    user = world.customer(4, balance=10_000)
    product = world.product(stock=20, price=100)
    too_many = shipping_service.MAX_UNITS + 1

    saga_id = world.order(user, product, quantity=too_many)

    timeline = world.log.timeline(saga_id)
    assert (timeline["status"], timeline["failed_step"]) == (SagaStatus.FAILED, "reserve_shipping")
    assert "do not fit one parcel" in timeline["failure_reason"]
    assert world.undone == [
        ("cancel_shipping", NEVER_APPLIED),  # its own first: voided, it never applied
        ("refund_balance", "undone"),
        ("restore_stock", "undone"),
        ("cancel_order", "order cancelled"),
    ]
    statuses = world.log.statuses(saga_id)
    assert [statuses[n] for n in SHIPPED_ORDER.steps_after("reserve_shipping")] == ["not_run"] * 2
    order_id = int(saga_id.removeprefix("order-"))
    assert (world.stock(product), world.balance(user)) == (20, 10_000)
    assert world.services.shipping.shipments(order_id) == []
    assert APPLIED not in world.ledgers(saga_id).values(), world.ledgers(saga_id)
    assert world.owed() == []


# --- (d) what the shop derives from a list, given this workflow's ------------------------


def test_what_the_shop_derives_from_a_service_list_includes_the_sixth(tmp_path):
    urls = {s: f"sqlite:///{tmp_path / f'{s}.db'}" for s in SIX_SERVICES}
    env = database_env(urls)  # what the tests' stacks give their processes
    assert env["SHIPPING_DATABASE_URL"] == urls["shipping"]
    # Settings read every <SERVICE>_DATABASE_URL set: no list of services of their own.
    settings = ShopSettings.from_env(env)
    assert {s: settings.database_url(s) for s in SIX_SERVICES} == urls
    # Each step and compensation is routed to its service's queue, shipping's too.
    routed = routes(list(SIX_WORKFLOWS.values()))
    assert (
        routed["order.reserve_shipping"] == routed["order.cancel_shipping"] == {"queue": "shipping"}
    )
    assert {r["queue"] for r in routed.values()} == set(SIX_SERVICES)
    assert home_of(SIX_WORKFLOWS) == ORDER.home == SIX_SERVICES[0]
