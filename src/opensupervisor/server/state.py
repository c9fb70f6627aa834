"""What the routes share: the application state and the JSON response class."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response

from opensupervisor.identity.grants import Access
from opensupervisor.identity.limits import RateLimiter
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs.service import ResponseService
from opensupervisor.server.auth_failures import FailedAuth
from opensupervisor.settings import Settings
from opensupervisor.store.connections import StoredConnections
from opensupervisor.store.credentials import UserCredentials
from opensupervisor.store.functions import RegisteredFunctions
from opensupervisor.store.grants import StoredGrants
from opensupervisor.store.principals import Principals
from opensupervisor.store.rate_limits import StoredRateLimits
from opensupervisor.store.usage import Usage
from opensupervisor.tools.connections import Connections
from opensupervisor.tools.genie import GenieSpaces
from opensupervisor.tools.knowledge_assistant import KnowledgeAssistants
from opensupervisor.tools.uc_functions import FunctionCatalog
from opensupervisor.workspace import Workspace


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


@dataclass(slots=True)
class AppState:
    settings: Settings
    workspace: Workspace
    admin_token: str
    service: ResponseService
    catalog: ModelCatalog
    spaces: GenieSpaces
    functions: FunctionCatalog
    registered: RegisteredFunctions
    connections: Connections
    stored_connections: StoredConnections
    assistants: KnowledgeAssistants
    principals: Principals
    access: Access
    stored_grants: StoredGrants
    usage: Usage
    limiter: RateLimiter
    stored_limits: StoredRateLimits
    credentials: UserCredentials
    started_at: int
    auth_failures: FailedAuth
