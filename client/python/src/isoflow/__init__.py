"""Python client for Isoflow's gRPC API (``isoflow.v1``).

>>> import isoflow
>>> with isoflow.Client("http://127.0.0.1:7700", token="acme-token") as client:
...     client.deploy("flows/orders.yaml")
...     run = client.start("orders-to-erp", {"export_url": "https://shop/export"})
...     for update in client.watch(run.run_id):
...         print(update)
...     print(client.output(run.run_id))

:class:`Client` is the tenant's API, :class:`AdminClient` the admin API;
failures raise :class:`IsoflowError`. The messages are the generated ones
in :mod:`isoflow.v1` (``v1.Run``, ``v1.RUN_STATUS_SUCCEEDED``, ...).
"""

from isoflow import v1
from isoflow._connection import CHUNK_BYTES, MAX_MESSAGE_BYTES
from isoflow.admin import AdminClient
from isoflow.client import Client, Execution, Update, status_name
from isoflow.errors import IsoflowError, Problem

__all__ = [
    "CHUNK_BYTES",
    "MAX_MESSAGE_BYTES",
    "AdminClient",
    "Client",
    "Execution",
    "IsoflowError",
    "Problem",
    "Update",
    "status_name",
    "v1",
]
