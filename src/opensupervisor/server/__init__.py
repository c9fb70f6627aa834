"""The HTTP server: routes, the auth edge and the SSE writer."""
