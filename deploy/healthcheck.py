"""`python -m deploy.healthcheck`: the image's HEALTHCHECK (compose; Kubernetes uses
the probes in deploy/k8s). Exit 0 when the process in this container answers
/healthz on its port: API_PORT for the API, PAYSIM_PORT for the simulated payment
system, METRICS_PORT (the ops port) for the others. A container with neither port has nothing to ask and counts as healthy."""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = (os.environ.get("API_PORT") or os.environ.get("PAYSIM_PORT")
            or os.environ.get("METRICS_PORT"))
    if not port or port == "0":
        return 0
    url = f"http://127.0.0.1:{int(port)}/healthz"  # int(): only a port number goes in the URL
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
