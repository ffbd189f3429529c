"""schemathesis hooks of ./scripts/fuzz.

`schema_valid_requests_are_accepted`: schemathesis's own positive-data check (a request
the OpenAPI document allows must not be refused with 400 or 422), except for the refusals
no document can foresee, because they depend on what the database holds rather than on the
request's shape:

- a reference to something that does not exist (an unknown category, product, order or
  card token: `422 validation_failed` naming only such fields), or an opaque cursor that
  no listing issued (`400`, "the cursor is not valid");
- an amount bounded by state: a refund over what is left to refund, a stock change past
  the most a product may hold, a payment that is not the order's total (`amount_mismatch`),
  an order whose prices add up past the largest amount, or of an empty cart;
- the WebSocket route, whose handshake no OpenAPI request describes;
- an `Idempotency-Key` reused with another body (`idempotency_key_reused`): the fuzzing
  draws keys from a small dictionary so that replays happen.

Every other refusal of a schema-valid request fails the run: the document promised more
than the server accepts.
"""

import re

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

REFERENCE = re.compile(r"^(category_id|parent_id|order_id|items\[\d+\]\.product_id|method\.token)$")
UNKNOWN = ("no such ", "can't be ordered", "not a card token the provider knows")
BOUNDED_BY_STATE = {
    "amount": ("left to refund",),
    "delta": ("would take stock past",),
    # An order of the cart (an empty one), or of products whose prices add up past the
    # largest amount.
    "items": ("the cart is empty", "the total is larger than the largest amount"),
}
STATE_CODES = {"amount_mismatch", "idempotency_key_reused"}


def foreseeable(problem: dict) -> bool:
    """Whether a refusal is one the document should have prevented."""
    code = problem.get("code")
    if code in STATE_CODES:
        return False
    if code == "bad_request":
        return "cursor is not valid" not in problem.get("detail", "")
    if code != "validation_failed" or not problem.get("errors"):
        return True
    for field, messages in problem["errors"].items():
        if REFERENCE.match(field) and all(any(u in m for u in UNKNOWN) for m in messages):
            continue
        if field in BOUNDED_BY_STATE and all(any(s in m for s in BOUNDED_BY_STATE[field]) for m in messages):
            continue
        return True
    return False


@schemathesis.check
def schema_valid_requests_are_accepted(ctx, response, case):
    # A WebSocket handshake, which no OpenAPI request describes (without its headers the
    # answer is 400 "this endpoint speaks WebSocket only").
    if case.operation.path.endswith("/orders/ws"):
        return None
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        try:
            problem = response.json()
        except ValueError:
            raise
        if not isinstance(problem, dict) or foreseeable(problem):
            raise
        return None
