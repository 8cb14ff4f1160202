"""The HTTP API under /v1 and the operations endpoints: routers, schemas, auth, parameters."""
