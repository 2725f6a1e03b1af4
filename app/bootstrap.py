"""The composition root: builds every real collaborator from Settings, nothing at import."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from app.db import Database, open_database
from app.faults import FaultInjector, parse_faults
from app.saga.log import SagaLog
from app.services.balances import BalanceService
from app.services.coupons import CouponService, IssuedCouponService, IssueRequestService
from app.services.dataplatform import DataPlatformService, RedisStream
from app.services.orders import OrderService
from app.services.products import ProductService
from config.settings import SERVICES, Settings
from dlq.store import DeadLetterStore

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    databases: dict[str, Database]
    orders: OrderService
    products: ProductService
    balances: BalanceService
    coupons: CouponService
    issued_coupons: IssuedCouponService
    issue_requests: IssueRequestService
    dataplatform: DataPlatformService
    saga_log: SagaLog
    dead_letters: DeadLetterStore
    faults: FaultInjector

    def dispose(self) -> None:
        for db in self.databases.values():
            db.dispose()
        self.redis.close()


def dlq_backoff(settings: Settings):
    def backoff(attempts: int) -> float:
        return min(settings.dlq_backoff_max, settings.dlq_backoff * (2**attempts))

    return backoff


def build_runtime(settings: Settings) -> Runtime:
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    dbs = {name: open_database(name, settings.database_url(name)) for name in SERVICES}
    faults = parse_faults(settings.faults_spec) if settings.faults_enabled else {}
    if faults:
        log.warning("fault injection is ON: %s", settings.faults_spec)
    return Runtime(
        settings=settings,
        redis=client,
        databases=dbs,
        orders=OrderService(dbs["orders"]),
        products=ProductService(dbs["products"]),
        balances=BalanceService(dbs["balances"]),
        coupons=CouponService(dbs["coupons"]),
        issued_coupons=IssuedCouponService(dbs["coupons"]),
        issue_requests=IssueRequestService(dbs["coupons"]),
        dataplatform=DataPlatformService(dbs["dataplatform"], RedisStream(client)),
        saga_log=SagaLog(dbs["orders"]),
        dead_letters=DeadLetterStore(client, dlq_backoff(settings)),
        faults=FaultInjector(faults, client.incr, overrun=settings.step_soft_time_limit + 1),
    )
