-- Cancel waiting jobs, or mark a live job's cancellation as requested.
--
-- ARGV: prefix, "cancel", now, number of ids, the ids, then per history entry: correlation id,
-- at, message id, entry (JSON text); or prefix, "request", job id.
-- Reply to cancel: the ids cancelled. Reply to request: 1 if the job is live (and now marked).
-- A job is cancelled unless it is leased with a live lease: deleted from its lane, its
-- idempotency key freed (if it still names it), and the history entries of the cancelled ones
-- written as commit.lua writes them.

local prefix, mode = ARGV[1], ARGV[2]
if mode == "request" then
  local job_key = prefix .. ":job:" .. ARGV[3]
  if redis.call("EXISTS", job_key) == 0 then
    return 0
  end
  redis.call("HSET", job_key, "c", 1)
  return 1
end

local now, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local cancelled, done = {}, {}
for i = 5, 4 + count do
  local id = ARGV[i]
  local job_key = prefix .. ":job:" .. id
  local job = redis.call("HMGET", job_key, "q", "d", "k", "p")
  if job[1] and not done[id] and not (job[2] and tonumber(job[2]) >= now) then
    local tag = prefix .. ":{" .. job[1] .. "}:"
    local lane = ""
    if job[4] and job[4] ~= "0" then
      lane = ":" .. job[4]
    end
    redis.call("DEL", job_key)
    redis.call("ZREM", tag .. "jobs" .. lane, id)
    redis.call("ZREM", tag .. "leased" .. lane, id)
    if job[3] then
      local idem_key = tag .. "idem:" .. job[3]
      if redis.call("GET", idem_key) == "- " .. id then
        redis.call("DEL", idem_key)
      end
    end
    done[id] = true
    cancelled[#cancelled + 1] = id
  end
end
for h = 5 + count, #ARGV, 4 do
  local correlation_id, message_id = ARGV[h], ARGV[h + 2]
  if done[message_id] then
    local key = prefix .. ":history:" .. correlation_id
    if redis.call("RPUSH", key, ARGV[h + 3]) == 1 then
      redis.call("ZADD", prefix .. ":history", "LT", ARGV[h + 1], correlation_id)
    end
    redis.call("RPUSH", prefix .. ":jobhistory:" .. message_id, correlation_id)
  end
end
return cancelled
