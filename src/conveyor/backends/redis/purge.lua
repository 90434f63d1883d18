-- Delete dead letters: the given ids, or up to `batch` of one queue's (or every queue's).
--
-- ARGV: prefix, "ids" followed by ids, or prefix, "queue", queue ("" = every queue), batch.
-- Reply: how many were deleted. The caller repeats a queue purge until fewer than `batch` go.

local prefix, mode = ARGV[1], ARGV[2]
local ids
if mode == "ids" then
  ids = {}
  for i = 3, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
else
  local index = prefix .. ":dead"
  if ARGV[3] ~= "" then
    index = prefix .. ":{" .. ARGV[3] .. "}:dead"
  end
  ids = redis.call("ZRANGE", index, 0, tonumber(ARGV[4]) - 1)
end
local count = 0
for _, id in ipairs(ids) do
  local dead_key = prefix .. ":dead:" .. id
  local queue = redis.call("HGET", dead_key, "q")
  if queue then
    redis.call("DEL", dead_key)
    redis.call("ZREM", prefix .. ":dead", id)
    redis.call("ZREM", prefix .. ":{" .. queue .. "}:dead", id)
    count = count + 1
  end
end
return count
