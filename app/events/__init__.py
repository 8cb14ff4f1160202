"""Outbound events: the outbox written with each change, subscriptions, and the dispatcher."""
