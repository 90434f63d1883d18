-- One page of dead letters, oldest failure first (ties by id).
--
-- ARGV: prefix, queue ("" = every queue), offset, limit.
-- Reply: flat list of (id, queue, body, error type, message, traceback or nil, attempts,
-- enqueued_at, failed_at) per dead letter.

local prefix, queue = ARGV[1], ARGV[2]
local offset, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
if limit <= 0 then
  return {}
end
local index = prefix .. ":dead"
if queue ~= "" then
  index = prefix .. ":{" .. queue .. "}:dead"
end
local page = {}
for _, id in ipairs(redis.call("ZRANGE", index, offset, offset + limit - 1)) do
  local dead = redis.call("HMGET", prefix .. ":dead:" .. id, "q", "b", "et", "em", "tb", "a", "e", "f")
  if dead[1] then
    page[#page + 1] = id
    for f = 1, 8 do
      page[#page + 1] = dead[f]
    end
  end
end
return page
