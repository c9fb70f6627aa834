from time import sleep

from databricks_openai import DatabricksOpenAI

client = DatabricksOpenAI(use_ai_gateway=True)

response = client.responses.create(
    model="databricks-claude-sonnet-4-5",
    input=[{"type": "message", "role": "user", "content": "Tell me about Databricks"}],
    background=True,
)
print(response.id)  # Use this ID to poll for the result
print(response.status)  # "queued" or "in_progress"

while response.status in {"queued", "in_progress"}:
    sleep(2)
    response = client.responses.retrieve(response.id)

print(response.output_text)
