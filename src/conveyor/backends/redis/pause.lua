-- Pause or resume a queue.
--
-- ARGV: prefix, "pause", queue, now; or prefix, "resume", queue.
-- Reply: 1 if the queue's state changed, else 0.
-- Field paused of <queue>:control (which lease.lua reads anyway, for the queue's lanes) stops
-- lease.lua from leasing the queue; <prefix>:paused lists the paused queues with when they were
-- paused. Resuming publishes a wake-up on the queue's channel for its idle workers.

local prefix, mode, queue = ARGV[1], ARGV[2], ARGV[3]
local tag = prefix .. ":{" .. queue .. "}:"
if mode == "pause" then
  -- (the reads first: a key of the wrong type fails the call before anything is written)
  if redis.call("HEXISTS", tag .. "control", "paused") == 1 then
    return 0
  end
  redis.call("HEXISTS", prefix .. ":paused", queue)
  redis.call("HSET", prefix .. ":paused", queue, ARGV[4])
  redis.call("HSET", tag .. "control", "paused", ARGV[4])
  return 1
end
redis.call("HDEL", prefix .. ":paused", queue)
if redis.call("HDEL", tag .. "control", "paused") == 0 then
  return 0
end
redis.call("PUBLISH", tag .. "notify", "")
return 1
