"""gunicorn settings for the API: `gunicorn -c config/gunicorn.py app.wsgi:app` (the
Procfile's `web`, and the gunicorn the tests and the bench start).

Threaded workers (gthread), because a sync worker serves one connection at a time: two
clients that send half a request header and stop would hold both workers and stall the
API. A gthread worker waits for a connection's first bytes without a thread (5 s, then on
its poller), so idle connections cost nothing; a client that starts a request and then
trickles holds one thread, not the worker. WEB_WORKERS x WEB_THREADS (2 x 16) such
clients are needed to stall it; in front of the internet, put a buffering proxy (nginx)
before gunicorn, as gunicorn's own docs advise.
"""

import os

from gunicorn.glogging import Logger


class AccessLogWithoutQueries(Logger):
    """gunicorn's logger, but the access log writes each request's path without its query
    string, and the Referer without its own.

    Why the whole query rather than the values of a list of sensitive names (access_token,
    token, jwt, password...): a list always misses the next name a client invents
    (`?apikey=`, `?sig=`), and the API takes nothing from a query string but GET /orders'
    `status` and `limit` (and the console's search), so dropping it costs the log little.
    A token sent there is refused (401), and must not be kept in the log either. The path
    is the raw one, still percent-encoded, so a client cannot write a line break into it."""

    def setup(self, cfg):
        super().setup(cfg)
        if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
            # gunicorn's own lines (its errors, each request) as JSON too.
            from app.logs import WorkFields, json_formatter

            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(json_formatter())
                    handler.addFilter(WorkFields("web"))

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        path = environ["RAW_URI"].split("?", 1)[0]
        atoms["r"] = f"{environ['REQUEST_METHOD']} {path} {environ['SERVER_PROTOCOL']}"
        atoms["q"] = "-"
        atoms["f"] = environ.get("HTTP_REFERER", "-").split("?", 1)[0]
        return atoms


bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
# A worker that stops answering its heartbeat this long is restarted.
timeout = 30
graceful_timeout = 10
# Idle keep-alive connections are closed after this long.
keepalive = 5
accesslog = "-"
logger_class = AccessLogWithoutQueries
errorlog = "-"
control_socket_disable = True
