-- Settlement counts per queue and minute (commit.lua writes them).
--
-- ARGV: prefix, "read", first minute, queues; or prefix, "prune", before.
-- Reply to read: flat (queue, minute, completed, retried, dead) by queue (in ARGV order) then
-- minute. Reply to prune: how many (queue, minute) buckets were deleted.
-- <queue>:counts indexes the queue's minutes (member: the minute as text, score: the minute);
-- <queue>:counts:<minute> is a hash of c, r, d. Prune visits the queues of <prefix>:worked (every
-- queue that settled something leased from it first) and forgets one with nothing left.

local prefix, mode = ARGV[1], ARGV[2]
if mode == "read" then
  local reply = {}
  for i = 4, #ARGV do
    local tag = prefix .. ":{" .. ARGV[i] .. "}:"
    for _, minute in ipairs(redis.call("ZRANGEBYSCORE", tag .. "counts", ARGV[3], "+inf")) do
      local counts = redis.call("HMGET", tag .. "counts:" .. minute, "c", "r", "d")
      reply[#reply + 1] = ARGV[i]
      reply[#reply + 1] = minute
      for f = 1, 3 do
        reply[#reply + 1] = tonumber(counts[f]) or 0
      end
    end
  end
  return reply
end
local before = "(" .. ARGV[3]
local removed = 0
for _, queue in ipairs(redis.call("SMEMBERS", prefix .. ":worked")) do
  local tag = prefix .. ":{" .. queue .. "}:"
  local index = tag .. "counts"
  for _, minute in ipairs(redis.call("ZRANGEBYSCORE", index, "-inf", before)) do
    redis.call("DEL", tag .. "counts:" .. minute)
    removed = removed + 1
  end
  redis.call("ZREMRANGEBYSCORE", index, "-inf", before)
  if redis.call("EXISTS", index) == 0 then
    local leased = redis.call("EXISTS", tag .. "leased") == 1
    local control = redis.call("HGETALL", tag .. "control")
    for f = 1, #control, 2 do
      leased = leased or (tonumber(control[f]) and redis.call("EXISTS", tag .. "leased:" .. control[f]) == 1)
    end
    if not leased then
      redis.call("SREM", prefix .. ":worked", queue)
    end
  end
end
return removed
