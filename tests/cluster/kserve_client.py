"""The KServe Python SDK's V1 REST client (`kserve.InferenceRESTClient`) sends the book's request to an
InferenceService's transformer and prints the answer as JSON. Runs in .venv-kserve-sdk (requirements/kserve-sdk.lock).

    kserve_client.py BASE_URL MODEL IMAGE_URL
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from kserve import InferenceRESTClient, RESTConfig


async def predict(base_url: str, model: str, image_url: str) -> Any:
    client = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    try:
        return await client.infer(base_url, {"instances": [{"url": image_url}]}, model_name=model)
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(predict(*sys.argv[1:4]))))
