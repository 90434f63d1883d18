-- Lease up to `limit` due jobs across queues, oldest available_at first (ties by job id).
--
-- ARGV: prefix, now, limit, then (queue, lease seconds) pairs.
-- Reply: flat list of (id, queue, body, attempt, token, enqueued_at) per leased job.
-- A lease moves the job's score in <queue>:jobs to the lease deadline and records the deadline
-- in <queue>:leased, so an expired lease is due again by the same rule as a delayed job.

local prefix, now_s = ARGV[1], ARGV[2]
local now, limit = tonumber(now_s), tonumber(ARGV[3])

local candidates = {}
for i = 4, #ARGV, 2 do
  local queue, seconds = ARGV[i], tonumber(ARGV[i + 1])
  local due = redis.call("ZRANGEBYSCORE", prefix .. ":{" .. queue .. "}:jobs", "-inf", now_s,
    "WITHSCORES", "LIMIT", 0, limit)
  for j = 1, #due, 2 do
    candidates[#candidates + 1] = { tonumber(due[j + 1]), due[j], queue, seconds }
  end
end
if #candidates == 0 then
  return {}
end
if #ARGV > 5 then
  -- one queue's range is already ordered; several queues are merged here
  table.sort(candidates, function(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1]
    end
    return a[2] < b[2]
  end)
end

local count = math.min(limit, #candidates)
local token = redis.call("INCRBY", prefix .. ":token", count) - count
local leased, deadlines = {}, {}
for i = 1, count do
  local score, id, queue, seconds = unpack(candidates[i])
  local job_key = prefix .. ":job:" .. id
  local job = redis.call("HMGET", job_key, "b", "e", "a")
  if job[1] then
    token = token + 1
    local attempt = tonumber(job[3]) + 1
    redis.call("HSET", job_key, "a", attempt, "t", token)
    local pairs_of_queue = deadlines[queue]
    if not pairs_of_queue then
      pairs_of_queue = {}
      deadlines[queue] = pairs_of_queue
    end
    pairs_of_queue[#pairs_of_queue + 1] = now + seconds
    pairs_of_queue[#pairs_of_queue + 1] = id
    local n = #leased
    leased[n + 1], leased[n + 2], leased[n + 3] = id, queue, job[1]
    leased[n + 4], leased[n + 5], leased[n + 6] = attempt, token, job[2]
  else
    -- a sorted-set member without its job hash cannot be leased: drop it
    redis.call("ZREM", prefix .. ":{" .. queue .. "}:jobs", id)
  end
end

-- ZADD in slices: Lua's unpack() is limited to a few thousand values
for queue, members in pairs(deadlines) do
  local tag = prefix .. ":{" .. queue .. "}:"
  for first = 1, #members, 2000 do
    local last = math.min(first + 1999, #members)
    redis.call("ZADD", tag .. "jobs", unpack(members, first, last))
    redis.call("ZADD", tag .. "leased", unpack(members, first, last))
  end
end
return leased
