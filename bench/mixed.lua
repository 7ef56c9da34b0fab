-- Nine reads of GET /allocations/{orderid} (ids from ORDERS) to one
-- POST /allocate (over SKUS skus named PREFIX-n), for the memory soak.
local write_headers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "write_headers.lua")
local ids = {}
for line in io.lines(os.getenv("ORDERS")) do ids[#ids + 1] = line end
local prefix = os.getenv("PREFIX")
local nskus = tonumber(os.getenv("SKUS"))
local counter = 0

init = function(args)
  math.randomseed(os.time() + math.random(1e6))
end

request = function()
  counter = counter + 1
  if counter % 10 == 0 then
    local body = string.format('{"orderid":"m%d-%d","sku":"%s-%d","qty":1}',
      counter, math.random(1e9), prefix, math.random(0, nskus - 1))
    return wrk.format("POST", "/allocate", write_headers, body)
  end
  return wrk.format("GET", "/allocations/" .. ids[math.random(#ids)])
end
