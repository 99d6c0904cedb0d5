"""Stub HTTP servers that answer in real wire formats, for integration tests."""
