-- Move dead letters back to their queues as fresh jobs (attempts reset, priority 0, their
-- queue's lease), available at `available_at`.
--
-- ARGV: prefix, now, available_at, dead letter ids.
-- Reply: {count, queue that got jobs, ...}.

local prefix, now_s, available_at = ARGV[1], ARGV[2], ARGV[3]
local due = tonumber(available_at) <= tonumber(now_s)
local count, woken, seen = 0, {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local dead_key = prefix .. ":dead:" .. id
  local queue = redis.call("HGET", dead_key, "q")
  local job_key = prefix .. ":job:" .. id
  -- a live job holding the same id (the same event delivered again) keeps it and the dead letter
  -- stays: replacing the job would break its lease
  if queue and redis.call("EXISTS", job_key) == 0 then
    local tag = prefix .. ":{" .. queue .. "}:"
    redis.call("RENAME", dead_key, job_key)
    -- a redriven job starts over, without its former idempotency key, lease, priority or marks
    redis.call("HDEL", job_key, "f", "et", "em", "tb", "k", "a", "d", "p", "s", "w", "l", "x", "c",
      "le", "lm", "lt")
    redis.call("ZREM", prefix .. ":dead", id)
    redis.call("ZREM", tag .. "dead", id)
    redis.call("ZADD", tag .. "jobs", available_at, id)
    count = count + 1
    if due and not seen[queue] then
      seen[queue] = true
      woken[#woken + 1] = queue
      redis.call("PUBLISH", tag .. "notify", "")
    end
  end
end
return { count, woken }
