"""Helpers the tests share: a real server subprocess and real archives."""
