-- Each customer logs in once, then loops: add to cart (1-3 lines) -> POST /api/orders ->
-- POST /api/payments (tok_visa, with an Idempotency-Key). Customers per thread: twice its
-- connections, so one is always ready when a connection is.
local lib = dofile((os.getenv("LOADTEST_DIR") or "loadtest") .. "/lib.lua")

setup = lib.setup
done = lib.done

function init(args)
  lib.seed()
  local connections = tonumber(os.getenv("LOADTEST_CONNECTIONS") or "64")
  local threads = tonumber(os.getenv("LOADTEST_THREADS") or "2")
  lib.init_journeys(2 * math.ceil(connections / threads), threads)
end

function request()
  return lib.journey_step() or wrk.format("GET", "/health")
end

function response(status, headers, body)
  lib.count(status)
  lib.journey_response(status, headers, body)
  lib.publish()
end
