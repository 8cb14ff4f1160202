"""Benchmarks of ingest, reads, events, retention and replicas (results in bench/README.md)."""
