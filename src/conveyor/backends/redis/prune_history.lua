-- Delete history entries older than `before`, for up to `batch` workflow instances.
--
-- ARGV: prefix, before, batch.
-- Reply: {entries deleted, instances visited}. The caller repeats while instances == batch.
-- The index <prefix>:history scores each instance by its oldest entry, so only instances with
-- something to delete are visited; entries are JSON arrays whose first item is `at` (and whose
-- fourth is the message id: a deleted entry leaves <prefix>:jobhistory:<message id> too).

local prefix, before_s, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local before = tonumber(before_s)
local index = prefix .. ":history"
local instances = redis.call("ZRANGEBYSCORE", index, "-inf", "(" .. before_s, "LIMIT", 0, batch)
local removed = 0
for _, correlation_id in ipairs(instances) do
  local key = prefix .. ":history:" .. correlation_id
  local kept, oldest = {}, nil
  for _, entry in ipairs(redis.call("LRANGE", key, 0, -1)) do
    local at = tonumber(string.match(entry, "^%[([^,]+),"))
    if at < before then
      removed = removed + 1
      local message_id = cjson.decode(entry)[4]
      if type(message_id) == "string" then
        local job_index = prefix .. ":jobhistory:" .. message_id
        redis.pcall("LREM", job_index, 1, correlation_id) -- (a record: a corrupt index is left)
      end
    else
      kept[#kept + 1] = entry
      if not oldest or at < oldest then
        oldest = at
      end
    end
  end
  redis.call("DEL", key)
  if #kept == 0 then
    redis.call("ZREM", index, correlation_id)
  else
    for first = 1, #kept, 2000 do
      redis.call("RPUSH", key, unpack(kept, first, math.min(first + 1999, #kept)))
    end
    redis.call("ZADD", index, oldest, correlation_id)
  end
end
return { removed, #instances }
