"""Pydantic models of the API's bodies, one module per resource; they are also the schemas
of its OpenAPI document."""
