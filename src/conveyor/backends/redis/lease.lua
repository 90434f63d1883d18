-- Lease up to `limit` due jobs across queues, oldest available_at first (ties by job id).
--
-- ARGV: prefix, now, limit, then (queue, lease seconds) pairs.
-- Reply: { jobs, problems }: jobs is a flat list of (id, queue, body, attempt, token, enqueued_at)
-- per leased job; problems lists one message per corrupt key met (for the caller to log).
-- A job waits in <queue>:jobs scored by available_at; a lease moves it to <queue>:leased scored
-- by the lease deadline. Both sets are read with the same rule (score <= now), so a job whose
-- lease expired is due again exactly like a delayed job.
--
-- A corrupt key (of the wrong type: written by something else than conveyor) costs at most its
-- own job: a queue whose sets cannot be read is skipped, a job whose hash is not a hash, or has no
-- body, becomes a dead letter. The checks are the reads themselves, made with redis.pcall: no
-- extra call per job.

local prefix, now_s = ARGV[1], ARGV[2]
local now, limit = tonumber(now_s), tonumber(ARGV[3])

local problems = {}

-- the due members of a queue's set, or nil (and a problem) if the key is not a sorted set
local function due_in(key, queue)
  local due = redis.pcall("ZRANGEBYSCORE", key, "-inf", now_s, "WITHSCORES", "LIMIT", 0, limit)
  if due.err then
    problems[#problems + 1] = key .. " holds a " .. redis.call("TYPE", key).ok
      .. ", not a sorted set: queue '" .. queue .. "' is skipped until the key is repaired"
    return nil
  end
  return due
end

-- every (queue, set) range is already ordered: merge their heads instead of sorting it all
local sources = {}
for i = 4, #ARGV, 2 do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  -- both sets or neither: a lease moves its jobs from one to the other
  local jobs = due_in(tag .. "jobs", ARGV[i])
  local leased = jobs and due_in(tag .. "leased", ARGV[i])
  if leased then
    for _, due in ipairs({ jobs, leased }) do
      if #due > 0 then
        sources[#sources + 1] = { due = due, at = 1, score = tonumber(due[2]), queue = i }
      end
    end
  end
end
if #sources == 0 then
  return { {}, problems }
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
local token_key = prefix .. ":token"
local minted = redis.pcall("INCRBY", token_key, count)
if type(minted) == "table" then
  -- no safe token can be made up: one lower than a token already issued would break fencing
  return redis.error_reply(token_key .. ", the fencing token counter, cannot be incremented ("
    .. minted.err .. "): nothing can be leased until it holds an integer above every token issued")
end
local token = minted - count
local job_prefix = prefix .. ":job:"
-- one deadline per queue, as text with every digit (what redis.call would make of the number)
local deadline_of = {}
for i = 4, #ARGV, 2 do
  deadline_of[i] = string.format("%.17g", now + tonumber(ARGV[i + 1]))
end
-- A job key that is not a hash, or a hash without field b (the body), becomes a dead letter of
-- its queue, with an error naming the key: a string's value is kept as the body, any other key is
-- renamed <prefix>:corrupt:job:<id>, untouched.
local function quarantine(job_key, id, queue)
  local kind = redis.call("TYPE", job_key).ok
  local body, kept = "", "its value is the dead letter's body"
  if kind == "string" then
    body = redis.call("GET", job_key)
    redis.call("DEL", job_key)
  else
    local aside = prefix .. ":corrupt:job:" .. id
    redis.call("RENAME", job_key, aside)
    kept = "the key is kept as " .. aside
  end
  local fault = " holds a " .. kind .. ", not a job hash"
  if kind == "hash" then
    fault = " has no field b (the body)"
  end
  local message = job_key .. fault .. ": job " .. id .. " of queue '" .. queue .. "' is dead-lettered ("
    .. kept .. ")"
  local dead_key = prefix .. ":dead:" .. id
  local earlier = redis.pcall("HGET", dead_key, "q")
  if type(earlier) == "string" and earlier ~= queue then
    -- the dead letter this one replaces (same id) was of another queue
    redis.pcall("ZREM", prefix .. ":{" .. earlier .. "}:dead", id)
  end
  redis.call("DEL", dead_key)
  redis.call("HSET", dead_key, "q", queue, "b", body, "e", now_s, "a", 0, "f", now_s,
    "et", "conveyor.model.errors.BackendError", "em", message)
  problems[#problems + 1] = message
  for _, index in ipairs({ prefix .. ":dead", prefix .. ":{" .. queue .. "}:dead" }) do
    -- (pcall: a corrupt dead-letter index must not stop the lease either)
    if type(redis.pcall("ZADD", index, now_s, id)) == "table" then
      problems[#problems + 1] = index .. " holds a " .. redis.call("TYPE", index).ok
        .. ", not a sorted set: dead letter " .. id .. " is missing from it"
    end
  end
end

local leased, moved = {}, {}
for c = 1, count do
  local id, i = picked[c], picked_queue[c]
  local job_key = job_prefix .. id
  local job = redis.pcall("HMGET", job_key, "b", "e", "a")
  local members = moved[i]
  if not members then
    members = { ids = {}, deadlines = {} }
    moved[i] = members
  end
  local ids = members.ids
  ids[#ids + 1] = id
  if job.err then
    quarantine(job_key, id, ARGV[i])
    redis.call("ZREM", prefix .. ":{" .. ARGV[i] .. "}:leased", id)
  elseif job[1] then
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
    -- (a missing enqueued_at must not leave a hole: the reply would end there)
    leased[n + 4], leased[n + 5], leased[n + 6] = attempt, token, job[2] or now_s
  else
    if redis.call("EXISTS", job_key) == 1 then -- a hash without its body
      quarantine(job_key, id, ARGV[i])
    end
    -- (a member without its job hash cannot be leased: dropped)
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
return { leased, problems }
