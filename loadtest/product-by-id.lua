-- GET /api/products/{id} with random ids from the seeded catalogue.
local lib = dofile((os.getenv("LOADTEST_DIR") or "loadtest") .. "/lib.lua")

lib.scenario({ browsing = true })

request = lib.product_page
