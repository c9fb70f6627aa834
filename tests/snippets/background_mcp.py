import json
from time import sleep
from typing import Any

from databricks_openai import DatabricksOpenAI

client = DatabricksOpenAI(use_ai_gateway=True)

tools = [
    {
        "type": "uc_connection",
        "uc_connection": {
            "name": "web_search",
            "description": "Searches the web for current information",
        },
    },
]
history: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": "Search the web: what is Databricks?"}]


def run(conversation: list[dict[str, Any]]) -> Any:
    response = client.responses.create(
        model="databricks-claude-sonnet-4-5", input=conversation, tools=tools, background=True
    )
    while response.status in {"queued", "in_progress"}:
        sleep(2)
        response = client.responses.retrieve(response.id)
    return response


response = run(history)
print(response.status)
approval_request = response.output[-1]
print(json.dumps(approval_request.model_dump()))

# Approve the tool call and continue the agent loop with the full conversation history.
history += [item.model_dump() for item in response.output]
history.append(
    {
        "type": "mcp_approval_response",
        "id": approval_request.id,
        "approval_request_id": approval_request.id,
        "approve": True,
    }
)
response = run(history)
print(response.status)
for item in response.output:
    print(json.dumps(item.model_dump()))
