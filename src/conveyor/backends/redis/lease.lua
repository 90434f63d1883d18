-- Lease up to `limit` due jobs across queues, oldest available_at first (ties by job id).
--
-- ARGV: prefix, now, limit, then (queue, lease seconds) pairs.
-- Reply: flat list of (id, queue, body, attempt, token, enqueued_at) per leased job.
-- A job waits in <queue>:jobs scored by available_at; a lease moves it to <queue>:leased scored
-- by the lease deadline. Both sets are read with the same rule (score <= now), so a job whose
-- lease expired is due again exactly like a delayed job.

local prefix, now_s = ARGV[1], ARGV[2]
local now, limit = tonumber(now_s), tonumber(ARGV[3])

-- every (queue, set) range is already ordered: merge their heads instead of sorting it all
local sources = {}
for i = 4, #ARGV, 2 do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  for _, set in ipairs({ "jobs", "leased" }) do
    local due = redis.call("ZRANGEBYSCORE", tag .. set, "-inf", now_s, "WITHSCORES", "LIMIT", 0, limit)
    if #due > 0 then
      sources[#sources + 1] = { due = due, at = 1, score = tonumber(due[2]), queue = i }
    end
  end
end
if #sources == 0 then
  return {}
end

local picked, picked_queue = {}, {}
if #sources == 1 then
  local due, queue = sources[1].due, sources[1].queue
  for j = 1, math.min(#due, 2 * limit), 2 do
    picked[#picked + 1] = due[j]
    picked_queue[#picked] = queue
  end
end
while #picked < limit and #sources > 1 do
  local best
  for _, source in ipairs(sources) do
    if source.at <= #source.due and (not best or source.score < best.score
        or (source.score == best.score and source.due[source.at] < best.due[best.at])) then
      best = source
    end
  end
  if not best then
    break
  end
  picked[#picked + 1] = best.due[best.at]
  picked_queue[#picked] = best.queue
  best.at = best.at + 2
  if best.at <= #best.due then
    best.score = tonumber(best.due[best.at + 1])
  end
end

local count = #picked
local token = redis.call("INCRBY", prefix .. ":token", count) - count
local job_prefix = prefix .. ":job:"
-- one deadline per queue, as text with every digit (what redis.call would make of the number)
local deadline_of = {}
for i = 4, #ARGV, 2 do
  deadline_of[i] = string.format("%.17g", now + tonumber(ARGV[i + 1]))
end
local leased, moved = {}, {}
for c = 1, count do
  local id, i = picked[c], picked_queue[c]
  local job_key = job_prefix .. id
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
    local attempt = (tonumber(job[3]) or 0) + 1
    local deadline = deadline_of[i]
    -- the deadline twice: in the hash for commit's checks, in <queue>:leased for lease and stats
    redis.call("HSET", job_key, "a", attempt, "t", token, "d", deadline)
    local deadlines = members.deadlines
    deadlines[#deadlines + 1] = deadline
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
local function call_in_slices(command, key, values)
  for first = 1, #values, 2000 do
    redis.call(command, key, unpack(values, first, math.min(first + 1999, #values)))
  end
end

for i, members in pairs(moved) do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  call_in_slices("ZREM", tag .. "jobs", members.ids)
  call_in_slices("ZADD", tag .. "leased", members.deadlines)
end
return leased
