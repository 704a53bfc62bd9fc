"""Test handler that records metrics through `context.metrics` as each request orders."""

import json
import logging

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.utils.util import PredictionException

log = logging.getLogger(__name__)


class MetricsHandler:
    def initialize(self, context):
        self.context = context

    def handle(self, data, context):
        metrics = context.metrics
        log.info("handling a batch of %d", len(data))
        out = []
        for i, row in enumerate(data):
            body = row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            order = body or {}
            color = Dimension("Color", order.get("color", "none"))
            metrics.add_counter("InferCount", 1, None, [color])
            metrics.add_time("PreprocessTime", 12.5, None, "ms")
            metrics.add_size("PayloadSize", 3.0, None, "MB")
            metrics.add_percent("Confidence", 87.5)
            metrics.add_metric("DistanceInKM", 2.0, "km", None, [color])
            metrics.add_metric("TokensSeen", order.get("tokens", 1), "count", None, [],
                               MetricTypes.HISTOGRAM)
            if order.get("declared") is not None:
                # Declared in the server's metrics_config: the cache has it from the start.
                gauge = metrics.get_metric("QueueLength", MetricTypes.GAUGE)
                gauge.add_or_update(order["declared"], [context.model_name, "Model"])
            if "level" in order:  # a gauge: the last value recorded is the one exported
                metrics.add_metric("FillLevel", order["level"], "percent", None, [],
                                   MetricTypes.GAUGE)
            if order.get("bad_counter"):
                metrics.add_counter("InferCount", -5, None, [color])  # refused, as TorchServe
            if order.get("raise"):
                raise PredictionException("failing on request", order["raise"])
            if "status" in order:
                context.set_response_status(order["status"], "as ordered", idx=i)
            out.append({"ok": True})
        return out
