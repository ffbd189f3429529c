-- Listing pages (sorted, by category, by price, following cursors) and full-text searches.
local lib = dofile((os.getenv("LOADTEST_DIR") or "loadtest") .. "/lib.lua")

lib.scenario({ browsing = true })

request = lib.listing

function response(status, headers, body)
  lib.count(status)
  lib.remember_cursor(headers, body)
  lib.publish()
end
