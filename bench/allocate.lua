-- POST /allocate of one unit, a new order id each time, over SKUS skus named
-- PREFIX-0 .. PREFIX-(SKUS-1). Counts answers by class for the report.
local write_headers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "write_headers.lua")
local prefix = os.getenv("PREFIX")
local nskus = tonumber(os.getenv("SKUS"))
local threads = {}
local counter = 0

setup = function(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

init = function(args)
  math.randomseed(os.time() + id * 7919)
  accepted, client_errors, server_errors = 0, 0, 0
end

request = function()
  counter = counter + 1
  local sku = prefix .. "-" .. math.random(0, nskus - 1)
  local body = string.format('{"orderid":"w%d-%d-%d","sku":"%s","qty":1}',
    id, counter, math.random(1e9), sku)
  return wrk.format("POST", "/allocate", write_headers, body)
end

response = function(status, headers, body)
  if status == 202 then accepted = accepted + 1
  elseif status >= 500 then server_errors = server_errors + 1
  else client_errors = client_errors + 1 end
end

done = function(summary, latency, requests)
  local a, c, s = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("accepted"); c = c + t:get("client_errors"); s = s + t:get("server_errors")
  end
  io.write(string.format("p50_ms=%.2f p99_ms=%.2f accepted=%d client_errors=%d server_errors=%d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, a, c, s))
end
