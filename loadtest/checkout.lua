-- Each customer logs in once, then loops: add to cart (1-3 lines) -> POST /api/orders ->
-- POST /api/payments (tok_visa, with an Idempotency-Key).
local lib = dofile((os.getenv("LOADTEST_DIR") or "loadtest") .. "/lib.lua")

lib.scenario({ journeys = true })

function request()
  return lib.journey_step() or wrk.format("GET", "/health")
end

function response(status, headers, body)
  lib.count(status)
  lib.journey_response(status, headers, body)
  lib.publish()
end
