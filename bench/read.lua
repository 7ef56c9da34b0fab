-- GET each path of the file named by PATHS, at random; or, with ORDERS,
-- GET /allocations/{orderid} over the order ids in that file.
local paths = {}
local prefix = os.getenv("PATHS") and "" or "/allocations/"
for line in io.lines(os.getenv("PATHS") or os.getenv("ORDERS")) do
  paths[#paths + 1] = prefix .. line
end
local bad = 0

init = function(args)
  math.randomseed(os.time() + math.random(1e6))
end

request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end

response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.2f p99_ms=%.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
