-- GET /api/products/{id} with random ids from the seeded catalogue.
local lib = dofile((os.getenv("LOADTEST_DIR") or "loadtest") .. "/lib.lua")

setup = lib.setup
done = lib.done

function init()
  lib.seed()
  lib.init_browsing()
end

request = lib.product_page
