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
errorlog = "-"
control_socket_disable = True
