-- The headers of the bench's writes: JSON, and the API's bearer token when the
-- bench gives it one (TOKEN). Loaded by the write scripts with dofile.
local headers = {["Content-Type"] = "application/json"}
local token = os.getenv("TOKEN")
if token and token ~= "" then
  headers["Authorization"] = "Bearer " .. token
end
return headers
