"""Test handler that declares it can overlap batches; answers with a running count and
records a counter and a histogram of its batch sizes."""

from ts.metrics.metric_type_enum import MetricTypes


class OverlapHandler:
    can_overlap = True

    def initialize(self, context):
        self.count = 0

    def handle(self, data, context):
        context.metrics.add_counter("OverlapItems", len(data))
        context.metrics.add_metric("OverlapBatchSize", len(data), "count", None, [],
                                   MetricTypes.HISTOGRAM)
        out = []
        for _ in data:
            self.count += 1
            out.append({"n": self.count})
        return out
