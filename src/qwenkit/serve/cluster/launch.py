"""`qwenkit serve --ray`: deploy the application on a Ray cluster (a local one on 127.0.0.1 unless given one)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable

from qwenkit.errors import QwenkitError
from qwenkit.serve.cluster.options import ClusterOptions

# Ray's switch for single-machine clusters: with it off, Ray's "this node's address" is 127.0.0.1
# rather than the machine's default address (which is not loopback here).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def serve_on_ray(
    options: ClusterOptions, address: str | None, host: str, port: int, say: Callable[[str], None]
) -> None:
    """Serve until interrupted; a Ray instance started here is stopped on the way out."""
    if address is None:
        os.environ.setdefault(LOOPBACK_ONLY, "0")  # read when ray is imported
    import ray
    from ray import serve

    from qwenkit.serve.cluster.app import NAMESPACE, build_app

    try:
        if address is None:
            ray.init(
                address="local", _node_ip_address="127.0.0.1", include_dashboard=False, logging_level=logging.WARNING
            )
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise QwenkitError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a terminate stops as cleanly as Ctrl-C
    try:
        serve.start(http_options={"host": host, "port": port})
        say(f"deploying {options.model} on Ray ({'local' if address is None else address}) ...")
        serve.run(build_app(options.model_dump()), name=options.name, route_prefix="/")
        where = f"http://{host}:{port}"
        say(f"serving [bold]{options.model}[/] on {where} (API at {where}/v1) through Ray Serve; Ctrl-C stops")
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(options.name)
        with contextlib.suppress(ValueError):  # the state actor was never created
            ray.kill(ray.get_actor(f"{options.name}-state", namespace=NAMESPACE))
        if address is None:
            serve.shutdown()
        ray.shutdown()
