"""mboxii-dlr: a durable receiver and read API for MboxII SMS delivery reports."""

__version__ = "0.1.0"
