"""Test handler written as for TorchServe's v2 path: it reads the request body's "inputs"."""


def _flat(values):
    if isinstance(values, list):
        return [v for item in values for v in _flat(item)]
    return [values]


class OipHandler:
    def initialize(self, context):
        self.mode = context.model_yaml_config.get("mode", "double")

    def handle(self, data, context):
        out = []
        for row in data:
            body = row.get("body")
            if self.mode == "batch":
                kind = "oip" if isinstance(body, dict) and "inputs" in body else "predictions"
                out.append({"batch": len(data), "kind": kind})
                continue
            inputs = body["inputs"]
            values = _flat(inputs[0]["data"])
            if self.mode == "upper":
                out.append([v.upper() for v in values])
            elif self.mode == "v2":
                out.append({"outputs": [
                    {"name": "sum", "datatype": "FP64", "shape": [1], "data": [sum(values)]},
                    {"name": "names", "datatype": "BYTES", "shape": [len(inputs)],
                     "data": [i["name"] for i in inputs]}]})
            elif self.mode == "wrong":
                out.append([1.0, 2.0, 3.0])  # the declared output holds 4
            else:
                out.append([2 * v for v in values])
        return out
