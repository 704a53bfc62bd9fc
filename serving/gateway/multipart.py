"""multipart/form-data bodies to handler inputs, every part's bytes exactly as sent.

python_multipart's parser is used directly rather than through Starlette, which decodes
non-file fields as text: a binary field (a packed tensor, an image sent without a file name)
would reach the handler mangled. TorchServe's backend gives the handler bytes for both kinds.
"""

from __future__ import annotations

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from serving.errors import BadRequest
from serving.types import Input

MAX_PARTS = 1000


class _Parts:
    """Collects parts from the parser's callbacks: headers, then data, per part."""

    def __init__(self) -> None:
        self.inputs: list[Input] = []
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._data: list[bytes] = []

    def part_begin(self) -> None:
        if len(self.inputs) >= MAX_PARTS:
            raise BadRequest(f"malformed multipart body: more than {MAX_PARTS} parts")
        self._headers = {}
        self._data = []

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def part_end(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise BadRequest('malformed multipart body: a part has no Content-Disposition '
                             '"form-data" with a name')
        value = b"".join(self._data)
        if b"filename" in options:  # a file keeps its content type
            ctype, _ = parse_options_header(self._headers.get(b"content-type"))
            self.inputs.append(Input(_text(name), ctype.decode("latin-1"), value))
        else:  # a field: no content type, as TorchServe sends form attributes
            self.inputs.append(Input(_text(name), "", value))

    def end(self) -> None:
        self.ended = True


def _text(name: bytes) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name.decode("latin-1")


def multipart_inputs(body: bytes, content_type: str) -> list[Input]:
    """One input per part, in order; 400 for a body that is not well-formed multipart."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("malformed multipart body: the content type names no boundary")
    parts = _Parts()
    callbacks = {"on_part_begin": parts.part_begin, "on_header_field": parts.header_field,
                 "on_header_value": parts.header_value, "on_header_end": parts.header_end,
                 "on_part_data": parts.part_data, "on_part_end": parts.part_end,
                 "on_end": parts.end}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise BadRequest(f"malformed multipart body: {e}") from None
    if not parts.ended:
        raise BadRequest("malformed multipart body: no closing boundary")
    return parts.inputs
