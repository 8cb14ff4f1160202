"""The test suite; conftest.py holds the fixtures, helpers.py the shared tools."""
