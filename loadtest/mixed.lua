-- A store's day: mostly browsing (product pages, listings, searches), some carts, few
-- checkouts. About 55 % product pages, 30 % listings and searches, 15 % journey steps
-- (roughly half of them cart additions, a quarter orders, a quarter payments).
local lib = dofile((os.getenv("LOADTEST_DIR") or "loadtest") .. "/lib.lua")

lib.scenario({ browsing = true, journeys = true })

function request()
  local r = math.random()
  if r < 0.15 then
    local step = lib.journey_step()
    if step then return step end
  end
  if r < 0.70 then return lib.product_page() end
  return lib.listing()
end

function response(status, headers, body)
  lib.count(status)
  if not lib.journey_response(status, headers, body) then
    lib.remember_cursor(headers, body)
  end
  lib.publish()
end
