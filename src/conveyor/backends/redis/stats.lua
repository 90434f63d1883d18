-- Counts per queue.
--
-- ARGV: prefix, now, queues.
-- Reply: per queue {ready, scheduled, leased, dead, oldest ready available_at or nil}.
-- <queue>:jobs holds the jobs not leased (ready up to now, scheduled after); <queue>:leased the
-- leased ones, counted as leased until they are settled or leased again, even once expired.

local prefix, now_s = ARGV[1], ARGV[2]
local stats = {}
for i = 3, #ARGV do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  local oldest = redis.call("ZRANGEBYSCORE", tag .. "jobs", "-inf", now_s, "WITHSCORES", "LIMIT", 0, 1)
  stats[#stats + 1] = {
    redis.call("ZCOUNT", tag .. "jobs", "-inf", now_s),
    redis.call("ZCOUNT", tag .. "jobs", "(" .. now_s, "+inf"),
    redis.call("ZCARD", tag .. "leased"),
    redis.call("ZCARD", tag .. "dead"),
    oldest[2] or false,
  }
end
return stats
