-- GET /allocations/{orderid} over the order ids in the file named by ORDERS.
local ids = {}
for line in io.lines(os.getenv("ORDERS")) do ids[#ids + 1] = line end
local bad = 0

init = function(args)
  math.randomseed(os.time() + math.random(1e6))
end

request = function()
  return wrk.format("GET", "/allocations/" .. ids[math.random(#ids)])
end

response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.2f p99_ms=%.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
