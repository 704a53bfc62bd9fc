"""Test handler whose initialize raises, to check that registration fails cleanly."""

from ts.torch_handler.base_handler import BaseHandler


class InitFails(BaseHandler):
    def initialize(self, context):
        raise ValueError("broken on purpose in initialize")
