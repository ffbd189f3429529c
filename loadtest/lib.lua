-- Shared by the wrk scenarios: data files, customers' journeys, and the result line the
-- runner reads. Every scenario runs against any base URL:
--   LOADTEST_DATA=loadtest/data wrk -t2 -c64 -d30s --latency -s loadtest/browse.lua http://127.0.0.1:8080
-- Data files (written by loadtest/run): product-ids.txt, checkout-ids.txt, category-ids.txt,
-- search-terms.txt, customers.txt (one email per line; the password is in LOADTEST_PASSWORD).

local lib = {}

local data_dir = os.getenv("LOADTEST_DATA") or "loadtest/data"

function lib.lines(name)
  local items = {}
  local file = assert(io.open(data_dir .. "/" .. name, "r"), "missing " .. data_dir .. "/" .. name)
  for line in file:lines() do
    if line ~= "" then items[#items + 1] = line end
  end
  file:close()
  assert(#items > 0, data_dir .. "/" .. name .. " is empty")
  return items
end

function lib.pick(items)
  return items[math.random(#items)]
end

-- Threads: numbered in setup(), so each seeds its own random numbers and takes its own
-- customers.
local threads = {}

function lib.setup(thread)
  thread:set("thread_id", #threads)
  threads[#threads + 1] = thread
end

function lib.seed()
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

-- A scenario's wrk hooks: setup and done from here; init seeds this thread's random
-- numbers and loads the browsing data and/or this thread's customers.
function lib.scenario(wants)
  setup = lib.setup
  done = lib.done
  init = function()
    lib.seed()
    if wants.browsing then lib.init_browsing() end
    if wants.journeys then
      -- Twice as many customers as connections, so one is always ready when a connection is.
      local connections = tonumber(os.getenv("LOADTEST_CONNECTIONS") or "64")
      local threads = tonumber(os.getenv("LOADTEST_THREADS") or "2")
      lib.init_journeys(2 * math.ceil(connections / threads), threads)
    end
  end
end

-- Browsing --------------------------------------------------------------------------

local products, categories, terms
-- Next pages to follow: a listing's query with the cursor its response gave.
local next_pages = {}
-- The query of each listing request in flight, by the X-Request-Id it carries ("l<n>"),
-- so that its response's cursor continues the same listing: a ring of slots, each knowing
-- which request it holds. (Ids reused every 4096 requests let an answer slower than that,
-- as at a run's cold start, find another listing's query under its id; the page that
-- followed then asked that listing for this one's cursor, a 400 the server was right to
-- give.)
local RING = 65536
local listings, listing_ids, listing_seq = {}, {}, 0

function lib.init_browsing()
  products = lib.lines("product-ids.txt")
  categories = lib.lines("category-ids.txt")
  terms = lib.lines("search-terms.txt")
end

-- Product pages are drawn by popularity: the product of rank k (a fixed shuffle of the
-- catalogue, the same in every thread) is asked for in proportion to 1/k (Zipf, s = 1),
-- as a store's traffic is; LOADTEST_DRAW=uniform draws every product alike instead, and
-- LOADTEST_DRAW=walk goes through the whole catalogue in order (each thread from its own
-- share of it): the warm-up that brings a cache to its steady state.
--
-- wrk runs on the machine it measures, so a draw must cost it little: every product's
-- request is formatted once, and a Zipf draw takes two random numbers (Walker's alias
-- method) where a search of the cumulative distribution took seventeen steps. (Drawn by
-- search, the load generator spent 4 µs more per request than on the ceiling's fixed
-- request, which the ratio to the ceiling then counted against the server.)
local draw = os.getenv("LOADTEST_DRAW") or "zipf"
local product_requests
local alias_probability, alias_other

local function init_product_requests()
  product_requests = {}
  for i = 1, #products do product_requests[i] = wrk.format("GET", "/api/products/" .. products[i]) end
end

local function init_zipf()
  -- The shuffle must not depend on the thread's seed: every thread ranks alike.
  local n = #products
  local ranked = {}
  for i = 1, n do ranked[i] = product_requests[i] end
  local state = 12345
  for i = n, 2, -1 do
    state = (state * 1103515245 + 12345) % 2147483648
    local j = state % i + 1
    ranked[i], ranked[j] = ranked[j], ranked[i]
  end
  product_requests = ranked
  -- Walker's alias table: column k keeps rank k with alias_probability[k], else gives
  -- alias_other[k]; each column carries 1/n of the mass.
  local total = 0
  for k = 1, n do total = total + 1 / k end
  local scaled, small, large = {}, {}, {}
  for k = 1, n do
    scaled[k] = n / (k * total)
    if scaled[k] < 1 then small[#small + 1] = k else large[#large + 1] = k end
  end
  alias_probability, alias_other = {}, {}
  while #small > 0 and #large > 0 do
    local s, l = table.remove(small), large[#large]
    alias_probability[s], alias_other[s] = scaled[s], l
    scaled[l] = scaled[l] + scaled[s] - 1
    if scaled[l] < 1 then
      table.remove(large)
      small[#small + 1] = l
    end
  end
  for _, k in ipairs(large) do alias_probability[k], alias_other[k] = 1, k end
  for _, k in ipairs(small) do alias_probability[k], alias_other[k] = 1, k end
end

local walked

function lib.product_page()
  if not product_requests then
    init_product_requests()
    if draw == "zipf" then init_zipf() end
  end
  local n = #product_requests
  if draw == "walk" then
    local threads = tonumber(os.getenv("LOADTEST_THREADS") or "2")
    walked = (walked or math.floor(n * (thread_id or 0) / threads)) % n + 1
    return product_requests[walked]
  end
  if draw == "uniform" then
    return product_requests[math.random(n)]
  end
  local k = math.random(n)
  if math.random() < alias_probability[k] then return product_requests[k] end
  return product_requests[alias_other[k]]
end

local sorts = { "newest", "price_asc", "price_desc" }

-- Listing pages, filters and full-text searches, in the proportions of a real store.
-- LOADTEST_ACCEPT_ENCODING=gzip asks for compressed pages, as a browser does (their cursors
-- are then not followed: the body is not read).
local accept_encoding = os.getenv("LOADTEST_ACCEPT_ENCODING")

function lib.listing()
  local r = math.random()
  local path
  if #next_pages > 0 and r < 0.15 then
    path = table.remove(next_pages)
  elseif r < 0.35 then
    path = "/api/products?limit=20&sort=" .. lib.pick(sorts)
  elseif r < 0.60 then
    path = "/api/products?limit=20&category_id=" .. lib.pick(categories)
  elseif r < 0.75 then
    local low = math.random(1, 200)
    path = string.format("/api/products?limit=20&min_price=%d&max_price=%d&in_stock=true", low, low + 50)
  else
    path = "/api/products?limit=20&q=" .. lib.pick(terms):gsub(" ", "+")
  end
  listing_seq = listing_seq + 1
  local slot = listing_seq % RING + 1
  listings[slot], listing_ids[slot] = path:gsub("&cursor=.*$", ""), listing_seq
  return wrk.format("GET", path, { ["X-Request-Id"] = "l" .. listing_seq, ["Accept-Encoding"] = accept_encoding })
end

-- The cursor is the page's last field: only the body's tail is searched, with a plain
-- find. (Matching a pattern across every 10 kB page took wrk about half the machine,
-- which then measured the load generator more than the server.)
function lib.remember_cursor(headers, body)
  if #next_pages >= 64 or not body then return end
  local id = headers["x-request-id"] or headers["X-Request-Id"]
  local n = id and tonumber(id:match("^l(%d+)$"))
  local slot = n and n % RING + 1
  if not (slot and listing_ids[slot] == n) then return end
  local listing = listings[slot]
  local at = body:find('"next_cursor":"', math.max(1, #body - 512), true)
  local cursor = at and body:match('^"next_cursor":"([^"]+)"', at)
  if cursor then
    next_pages[#next_pages + 1] = listing .. "&cursor=" .. cursor
  end
end

-- Journeys: each customer logs in once, then adds to its cart, checks out and pays, over
-- and over. Requests carry X-Request-Id "j<customer>-<n>", which the services echo, so a
-- response finds its customer whichever connection it came back on.

local customers = {}
local idle = {}
local password = os.getenv("LOADTEST_PASSWORD") or "loadtest-password"
local counter = 0
lib.orders, lib.payments = 0, 0

-- This thread's customers: every `threads`-th line of customers.txt, from its own offset.
function lib.init_journeys(count, thread_count)
  local emails = lib.lines("customers.txt")
  local checkout_products = lib.lines("checkout-ids.txt")
  local mine = 0
  for i = (thread_id or 0) + 1, #emails, thread_count do
    mine = mine + 1
    customers[mine] = { email = emails[i], step = "login", lines = 0, products = checkout_products }
    idle[#idle + 1] = mine
    if mine >= count then break end
  end
  assert(mine > 0, "no customers for this thread: write more lines to customers.txt")
end

local address = '{"name":"Load Test","line1":"1 Main St","city":"Springfield","postal_code":"12345","country":"US"}'

local function key(c)
  counter = counter + 1
  return string.format("lt-%d-%d-%d-%d", thread_id or 0, c, counter, os.time())
end

-- Customers whose answer never came (a socket error or timeout calls no response()) go
-- back to the idle ones after this long, starting their journey again.
local STUCK_AFTER = 15

local function reclaim_stuck()
  local now = os.time()
  for c, customer in ipairs(customers) do
    if customer.sent_at and now - customer.sent_at > STUCK_AFTER then
      customer.sent_at = nil
      if customer.step ~= "login" then customer.step, customer.lines = "cart", 0 end
      idle[#idle + 1] = c
    end
  end
end

-- The next request of some customer that is not waiting for an answer (nil if all are).
function lib.journey_step()
  local c = table.remove(idle, 1)
  if not c then
    reclaim_stuck()
    c = table.remove(idle, 1)
    if not c then return nil end
  end
  local customer = customers[c]
  customer.sent_at = os.time()
  counter = counter + 1
  local headers = { ["X-Request-Id"] = string.format("j%d-%d", c, counter), ["Content-Type"] = "application/json" }
  if customer.token then headers["Authorization"] = "Bearer " .. customer.token end
  if customer.step == "login" then
    return wrk.format("POST", "/api/auth/login", headers,
      string.format('{"email":"%s","password":"%s"}', customer.email, password))
  elseif customer.step == "cart" then
    return wrk.format("PUT", "/api/cart/items/" .. lib.pick(customer.products), headers, '{"quantity":1}')
  elseif customer.step == "order" then
    headers["Idempotency-Key"] = key(c)
    return wrk.format("POST", "/api/orders", headers, '{"shipping_address":' .. address .. '}')
  else
    headers["Idempotency-Key"] = key(c)
    return wrk.format("POST", "/api/payments", headers, string.format(
      '{"order_id":"%s","amount":"%s","currency":"USD","method":{"type":"card","token":"tok_visa"}}',
      customer.order, customer.total))
  end
end

-- Moves the customer of a journey response on; false if the response was not a journey's.
function lib.journey_response(status, headers, body)
  local id = headers["x-request-id"] or headers["X-Request-Id"]
  local c = id and tonumber(id:match("^j(%d+)-"))
  if not c or not customers[c] or not customers[c].sent_at then return false end
  local customer = customers[c]
  customer.sent_at = nil
  if customer.step == "login" and status == 200 then
    customer.token = body:match('"access_token":"([^"]+)"')
    customer.step = "cart"
  elseif customer.step == "cart" and status == 200 then
    customer.lines = customer.lines + 1
    -- One to three lines, then check out.
    if customer.lines >= math.random(1, 3) then customer.step = "order" end
  elseif customer.step == "order" and status == 201 then
    lib.orders = lib.orders + 1
    customer.order = body:match('"id":"([^"]+)"')
    customer.total = body:match('"total":"([^"]+)"')
    customer.step = (customer.order and customer.total) and "pay" or "cart"
  elseif customer.step == "pay" and status == 201 then
    lib.payments = lib.payments + 1
    customer.step, customer.lines = "cart", 0
  elseif customer.step ~= "login" then
    -- Anything else (counted by wrk as non-2xx): start the journey again.
    customer.step, customer.lines = "cart", 0
  end
  idle[#idle + 1] = c
  return true
end

-- Results ---------------------------------------------------------------------------

-- One line the runner parses: throughput, latency percentiles (µs), errors, and the
-- scenario's own counters summed over threads.
function lib.done(summary, latency, requests)
  local orders, payments, statuses_by_thread = 0, 0, {}
  for _, thread in ipairs(threads) do
    orders = orders + (thread:get("orders_done") or 0)
    payments = payments + (thread:get("payments_done") or 0)
    statuses_by_thread[#statuses_by_thread + 1] = "{" .. (thread:get("statuses_done") or "") .. "}"
  end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'LOADTEST_RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f,"non_2xx":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"orders":%d,"payments":%d,"statuses_by_thread":[%s]}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout, orders, payments, table.concat(statuses_by_thread, ",")))
end

-- Non-2xx answers by status, for scenarios that look at responses.
local statuses = {}

function lib.count(status)
  if status >= 300 then statuses[status] = (statuses[status] or 0) + 1 end
end

-- Copies this thread's counters where done() can read them.
function lib.publish()
  orders_done = lib.orders
  payments_done = lib.payments
  local parts = {}
  for status, n in pairs(statuses) do parts[#parts + 1] = string.format('"%d":%d', status, n) end
  statuses_done = table.concat(parts, ",")
end

return lib
