"""Path converters. Werkzeug's `int` matches any Unicode digit (`\\d`), so "/orders/١٢"
(Arabic-Indic digits) would be order 12: ids here are ASCII digits only, within the
32-bit columns, and anything else is a 404 like any unknown path."""

from __future__ import annotations

from werkzeug.routing import BaseConverter, ValidationError

MAX_ID = 2**31 - 1


class IdConverter(BaseConverter):
    regex = r"[0-9]{1,10}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if not 1 <= number <= MAX_ID:
            raise ValidationError()
        return number

    def to_url(self, value) -> str:
        return str(int(value))
