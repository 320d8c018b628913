"""The API's messages and enums (``api_pb2``) and stubs (``api_pb2_grpc``),
generated from proto/isoflow/v1/api.proto by ``generate.py``; do not edit
those files. Here: ``v1.Run``, ``v1.RunStatus``, ``v1.RUN_STATUS_FAILED``...
"""

from isoflow.v1.api_pb2 import *  # noqa: F403 (the generated messages and enum values)
