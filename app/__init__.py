"""The allocation service: warehouse stock allocated to order lines."""

import os

# prometheus-client turns on its multiprocess mode when this variable merely
# exists, before any setting is read; empty means unset here as for every
# other setting (a `.env` loaded with `uvicorn --env-file` may hold it empty).
if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == "":
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]
