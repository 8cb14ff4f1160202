"""The write path: parse a callback, fold reports by the ordering rule, commit them in groups."""
