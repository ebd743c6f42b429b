"""The error a model raises for bad input, answered by DEEPaaS as a 400.

DEEPaaS runs predict and train in worker processes. An exception raised there comes back
through pickle; aiohttp's own HTTP exceptions do not survive that (their constructor takes
keyword arguments only), and anything that is not an aiohttp HTTP exception becomes a 500.
BadInput is an `aiohttp.web.HTTPBadRequest` that pickles: predict's handler re-raises it
and aiohttp answers 400 with `{"message": ...}`, DEEPaaS's own failure schema. A training
that raises it ends with status "error" and the message.
"""

from __future__ import annotations

import json

from aiohttp import web


class BadInput(web.HTTPBadRequest):
    def __init__(self, message: str):
        super().__init__(text=json.dumps({"message": message}), content_type="application/json")
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))

    def __str__(self) -> str:
        return self.message
