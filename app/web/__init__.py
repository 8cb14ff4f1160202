"""HTTP plumbing around every route: request context, headers, bodies, caller addresses."""
