-- The bare ceiling: one fixed request (LOADTEST_METHOD, LOADTEST_PATH) against the
-- `ceiling` binary, reported like the scenarios.
local lib = dofile((os.getenv("LOADTEST_DIR") or "loadtest") .. "/lib.lua")

lib.scenario({})

local method = os.getenv("LOADTEST_METHOD") or "GET"
local path = os.getenv("LOADTEST_PATH") or "/json"

-- Formatted once, as the scenarios' requests are (lib.product_page).
local fixed

function request()
  fixed = fixed or wrk.format(method, path)
  return fixed
end
