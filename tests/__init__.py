"""The test suite (pytest). Shared helpers live in tests.support; fixtures in the conftest files."""
