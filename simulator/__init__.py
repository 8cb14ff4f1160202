"""A simulator of the MboxII gateway, a second application beside the service (tests, demos)."""
