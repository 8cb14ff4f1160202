"""The read path: lookups, filters, keyset cursors, aggregates and exports, in SQL."""
