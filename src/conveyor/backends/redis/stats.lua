-- Counts per queue.
--
-- ARGV: prefix, now, queues.
-- Reply: per queue {ready, scheduled, leased, dead, oldest ready available_at or false, paused}.
-- Each lane's <queue>:jobs[:<priority>] holds its jobs not leased (ready up to now, scheduled
-- after), <queue>:leased[:<priority>] the leased ones, counted as leased until they are settled
-- or leased again, even once expired. Every count is a ZCOUNT or ZCARD: no member is read.

local prefix, now_s = ARGV[1], ARGV[2]
local now = tonumber(now_s)
local stats = {}
for i = 3, #ARGV do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  local suffixes, paused = { "" }, 0
  local control = redis.call("HGETALL", tag .. "control")
  for f = 1, #control, 2 do
    if control[f] == "paused" then
      paused = 1
    elseif tonumber(control[f]) then
      suffixes[#suffixes + 1] = ":" .. control[f]
    end
  end
  local ready, scheduled, leased, oldest = 0, 0, 0, nil
  for _, suffix in ipairs(suffixes) do
    local jobs = tag .. "jobs" .. suffix
    ready = ready + redis.call("ZCOUNT", jobs, "-inf", now_s)
    scheduled = scheduled + redis.call("ZCOUNT", jobs, "(" .. now_s, "+inf")
    leased = leased + redis.call("ZCARD", tag .. "leased" .. suffix)
    local first = redis.call("ZRANGEBYSCORE", jobs, "-inf", now_s, "WITHSCORES", "LIMIT", 0, 1)
    if first[2] and (not oldest or tonumber(first[2]) < tonumber(oldest)) then
      oldest = first[2]
    end
  end
  stats[#stats + 1] = { ready, scheduled, leased, redis.call("ZCARD", tag .. "dead"), oldest or false, paused }
end
return stats
