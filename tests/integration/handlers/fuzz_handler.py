"""Test handler for API fuzzing: names the type of every input it got and never fails, so a
5xx from a call to it is the server's fault, not the handler's."""


class FuzzHandler:
    def initialize(self, context):
        self.context = context

    def handle(self, data, context):
        return [{name: type(value).__name__ for name, value in row.items()} for row in data]
