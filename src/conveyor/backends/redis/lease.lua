-- Lease up to `limit` due jobs across queues, oldest available_at first (ties by job id).
--
-- ARGV: prefix, now, limit, then (queue, lease seconds) pairs.
-- Reply: flat list of (id, queue, body, attempt, token, enqueued_at) per leased job.
-- A job waits in <queue>:jobs scored by available_at; a lease moves it to <queue>:leased scored
-- by the lease deadline. Both sets are read with the same rule (score <= now), so a job whose
-- lease expired is due again exactly like a delayed job.

local prefix, now_s = ARGV[1], ARGV[2]
local now, limit = tonumber(now_s), tonumber(ARGV[3])

local candidates = {}
local sources = 0
for i = 4, #ARGV, 2 do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  for _, set in ipairs({ "jobs", "leased" }) do
    local due = redis.call("ZRANGEBYSCORE", tag .. set, "-inf", now_s, "WITHSCORES", "LIMIT", 0, limit)
    if #due > 0 then
      sources = sources + 1
      for j = 1, #due, 2 do
        candidates[#candidates + 1] = { tonumber(due[j + 1]), due[j], i }
      end
    end
  end
end
if sources == 0 then
  return {}
end
if sources > 1 then
  table.sort(candidates, function(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1]
    end
    return a[2] < b[2]
  end)
end

local count = math.min(limit, #candidates)
local token = redis.call("INCRBY", prefix .. ":token", count) - count
local leased, moved = {}, {}
for c = 1, count do
  local id, i = candidates[c][2], candidates[c][3]
  local job_key = prefix .. ":job:" .. id
  local job = redis.call("HMGET", job_key, "b", "e", "a")
  local members = moved[i]
  if not members then
    members = { ids = {}, deadlines = {} }
    moved[i] = members
  end
  local ids = members.ids
  ids[#ids + 1] = id
  if job[1] then
    token = token + 1
    local attempt = tonumber(job[3]) + 1
    redis.call("HSET", job_key, "a", attempt, "t", token)
    local deadlines = members.deadlines
    deadlines[#deadlines + 1] = now + tonumber(ARGV[i + 1])
    deadlines[#deadlines + 1] = id
    local n = #leased
    leased[n + 1], leased[n + 2], leased[n + 3] = id, ARGV[i], job[1]
    leased[n + 4], leased[n + 5], leased[n + 6] = attempt, token, job[2]
  else
    -- a member without its job hash cannot be leased: drop it
    redis.call("ZREM", prefix .. ":{" .. ARGV[i] .. "}:leased", id)
  end
end

-- in slices: Lua's unpack() is limited to a few thousand values
for i, members in pairs(moved) do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  local ids, deadlines = members.ids, members.deadlines
  for first = 1, #ids, 1000 do
    redis.call("ZREM", tag .. "jobs", unpack(ids, first, math.min(first + 999, #ids)))
  end
  for first = 1, #deadlines, 2000 do
    redis.call("ZADD", tag .. "leased", unpack(deadlines, first, math.min(first + 1999, #deadlines)))
  end
end
return leased
