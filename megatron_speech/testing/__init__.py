"""Helpers the tests share: importable, so the processes that tests start can use them too."""
