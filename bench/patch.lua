-- PATCH /batches/PREFIX-n-b over SKUS batches, each to a quantity above what it
-- has allocated: a change of stock that deallocates nothing.
local write_headers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "write_headers.lua")
local prefix = os.getenv("PREFIX")
local nskus = tonumber(os.getenv("SKUS"))

init = function(args)
  math.randomseed(os.time() + math.random(1e6))
end

request = function()
  local ref = prefix .. "-" .. math.random(0, nskus - 1) .. "-b"
  local body = string.format('{"qty":%d}', 100000000 + math.random(1e6))
  return wrk.format("PATCH", "/batches/" .. ref, write_headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.2f p99_ms=%.2f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
