-- POST /add_batch of a new batch each time, over SKUS skus named PREFIX-0 ..
-- PREFIX-(SKUS-1), each with ample stock in the warehouse.
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
end

request = function()
  counter = counter + 1
  local sku = prefix .. "-" .. math.random(0, nskus - 1)
  local body = string.format('{"ref":"nb%d-%d-%d","sku":"%s","qty":1000000,"eta":null}',
    id, counter, math.random(1e9), sku)
  return wrk.format("POST", "/add_batch", write_headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.2f p99_ms=%.2f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
