-- Counts per queue.
--
-- ARGV: prefix, now, queues.
-- Reply: per queue {ready, scheduled, leased, dead, oldest ready available_at or nil}.
-- <queue>:jobs holds every job of the queue; <queue>:leased the leased subset (by deadline), so
-- ready and scheduled are the differences of the two counts on either side of now.

local prefix, now_s = ARGV[1], ARGV[2]
local stats = {}
for i = 3, #ARGV do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  local later = "(" .. now_s
  local leased_due = redis.call("ZCOUNT", tag .. "leased", "-inf", now_s)
  local leased_later = redis.call("ZCOUNT", tag .. "leased", later, "+inf")
  local ready = redis.call("ZCOUNT", tag .. "jobs", "-inf", now_s) - leased_due
  local scheduled = redis.call("ZCOUNT", tag .. "jobs", later, "+inf") - leased_later
  local oldest = false
  local offset = 0
  -- skip expired leases (due but still leased) to find the oldest ready job
  while ready > 0 and not oldest do
    local due = redis.call("ZRANGEBYSCORE", tag .. "jobs", "-inf", now_s, "WITHSCORES",
      "LIMIT", offset, 100)
    if #due == 0 then
      break
    end
    for j = 1, #due, 2 do
      if redis.call("ZSCORE", tag .. "leased", due[j]) == false then
        oldest = due[j + 1]
        break
      end
    end
    offset = offset + 100
  end
  local dead = redis.call("ZCARD", tag .. "dead")
  stats[#stats + 1] = { ready, scheduled, leased_due + leased_later, dead, oldest }
end
return stats
