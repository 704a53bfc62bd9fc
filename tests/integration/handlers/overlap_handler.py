"""Test handler that declares it can overlap batches; answers with a running count."""


class OverlapHandler:
    can_overlap = True

    def initialize(self, context):
        self.count = 0

    def handle(self, data, context):
        out = []
        for _ in data:
            self.count += 1
            out.append({"n": self.count})
        return out
