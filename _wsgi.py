"""Label Studio ML-backend entry point: exposes ``app`` (for gunicorn) and runs a server when executed.

gunicorn --workers 2 --threads 8 --bind 0.0.0.0:9090 _wsgi:app
python _wsgi.py --port 9090
"""

from __future__ import annotations

import argparse
import logging
import os

from glus_backend.server import create_app

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="GLUS Label Studio ML backend (web process)")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9090")))
    args = parser.parse_args()
    app.run(host=args.host, port=args.port, threaded=True)
