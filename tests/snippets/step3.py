import mlflow
from databricks_openai import DatabricksOpenAI
from mlflow.tracing import get_tracing_context_headers_for_http_request

client = DatabricksOpenAI(use_ai_gateway=True)
tools = [{"type": "genie_space", "genie_space": {"id": "reviews", "description": "Answers review questions using SQL"}}]

response = client.responses.create(
model="databricks-claude-sonnet-4-5",
input=[{"type": "message", "role": "user", "content": "Tell me about Databricks"}],
tools=tools,
extra_body={
"trace_destination": {
"catalog_name": "main",
"schema_name": "agents",
"table_prefix": "supervisor"
},
"databricks_options": {"return_trace": True}
}
)
print(response.databricks_output["trace"]["info"]["trace_id"])

with mlflow.start_span("client-root") as root_span:
    root_span.set_inputs({"input": "Tell me about Databricks"})
    trace_headers = get_tracing_context_headers_for_http_request()
    response = client.responses.create(
    model="databricks-claude-sonnet-4-5",
    input=[{"type": "message", "role": "user", "content": "Tell me about Databricks"}],
    tools=tools,
    extra_body={
    "trace_destination": {
    "catalog_name": "main",
    "schema_name": "agents",
    "table_prefix": "supervisor"
    }
    },
    extra_headers=trace_headers,
    )
print(root_span.trace_id)
print(response.output_text)
