"""The async HTTP client that calls a user's LLM application ("endpoint") for one test.

template (request rendering in a sandbox), guard (no calls into private networks), auth (headers, OAuth2
token cache), mapping (answer -> output/context/metadata), retry (taxonomy and backoff), client (all of it).
"""

from worker.execution.endpoint.client import EndpointClient
from worker.execution.endpoint.template import test_variables

__all__ = ["EndpointClient", "test_variables"]
