-- Lease up to `limit` due jobs across queues: the highest priority first, then the oldest
-- available_at (ties by job id), within a queue and across them.
--
-- ARGV: prefix, now, limit, worker, then (queue, lease seconds) pairs.
-- Reply: { jobs, problems }: jobs is a flat list of (id, queue, body, attempt, token, enqueued_at,
-- lease deadline) per leased job; problems lists one message per corrupt key met (for the caller
-- to log).
-- A job waits in its lane, <queue>:jobs (priority 0) or <queue>:jobs:<priority>, scored by
-- available_at; a lease moves it to the lane's leased set, <queue>:leased[:<priority>], scored by
-- the lease deadline. Both sets are read with the same rule (score <= now), so a job whose lease
-- expired is due again exactly like a delayed job. <queue>:control (a hash, absent for nearly
-- every queue) says which other lanes the queue uses and whether it is paused: one read per queue,
-- and lane 0 alone costs what it did before lanes.
--
-- A corrupt key (of the wrong type: written by something else than conveyor) costs at most its
-- own job: a queue whose sets cannot be read is skipped, a job whose hash is not a hash, or has no
-- body, becomes a dead letter. The checks are the reads themselves, made with redis.pcall: no
-- extra call per job.

local prefix, now_s = ARGV[1], ARGV[2]
local now, limit = tonumber(now_s), tonumber(ARGV[3])
local worker = ARGV[4]
local FIRST_QUEUE = 5

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

-- the lanes of a queue to read (lane 0 first, then the others in use, highest first), or nil if
-- the queue is paused or its control hash is corrupt
local function lanes_of(tag, queue)
  local control_key = tag .. "control"
  local control = redis.pcall("HGETALL", control_key)
  if control.err then
    problems[#problems + 1] = control_key .. " holds a " .. redis.call("TYPE", control_key).ok
      .. ", not a hash: queue '" .. queue .. "' is skipped until the key is repaired"
    return nil
  end
  local lanes = { 0 }
  for f = 1, #control, 2 do
    local field = control[f]
    if field == "paused" then
      return nil
    end
    local priority = tonumber(field)
    if priority and priority ~= 0 then
      lanes[#lanes + 1] = priority
    end
  end
  table.sort(lanes, function(a, b) return a > b end)
  return lanes
end

local function lane_suffix(priority)
  if priority == 0 then
    return ""
  end
  return ":" .. priority
end

-- every (queue, lane, set) range is already ordered: merge their heads instead of sorting it all
local sources = {}
for i = FIRST_QUEUE, #ARGV, 2 do
  local tag = prefix .. ":{" .. ARGV[i] .. "}:"
  for _, priority in ipairs(lanes_of(tag, ARGV[i]) or {}) do
    local suffix = lane_suffix(priority)
    -- both sets or neither: a lease moves its jobs from one to the other
    local jobs = due_in(tag .. "jobs" .. suffix, ARGV[i])
    local leased = jobs and due_in(tag .. "leased" .. suffix, ARGV[i])
    if leased then
      for _, due in ipairs({ jobs, leased }) do
        if #due > 0 then
          sources[#sources + 1] = {
            due = due, at = 1, score = tonumber(due[2]), queue = i, priority = priority, suffix = suffix,
          }
        end
      end
      if priority ~= 0 and #jobs == 0 and #leased == 0
          and redis.call("EXISTS", tag .. "jobs" .. suffix, tag .. "leased" .. suffix) == 0 then
        -- an empty lane is forgotten; commit.lua names it again when it gets a job
        redis.call("HDEL", tag .. "control", tostring(priority))
      end
    end
  end
end
if #sources == 0 then
  return { {}, problems }
end

local picked, picked_source = {}, {}
if #sources == 1 then
  local due = sources[1].due
  for j = 1, math.min(#due, 2 * limit), 2 do
    picked[#picked + 1] = due[j]
    picked_source[#picked] = sources[1]
  end
end
-- a before b: higher priority, then lower score, then lower id
local function precedes(a, b)
  if a.priority ~= b.priority then
    return a.priority > b.priority
  end
  return a.score < b.score or (a.score == b.score and a.due[a.at] < b.due[b.at])
end
while #picked < limit and #sources > 1 do
  local best
  for _, source in ipairs(sources) do
    if source.at <= #source.due and (not best or precedes(source, best)) then
      best = source
    end
  end
  if not best then
    break
  end
  picked[#picked + 1] = best.due[best.at]
  picked_source[#picked] = best
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
for i = FIRST_QUEUE, #ARGV, 2 do
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
  local id, source = picked[c], picked_source[c]
  local i = source.queue
  local job_key = job_prefix .. id
  local leased_key = prefix .. ":{" .. ARGV[i] .. "}:leased" .. source.suffix
  local job = redis.pcall("HMGET", job_key, "b", "e", "a", "s")
  -- per lane: the ids leave <queue>:jobs[:p] (or stay in <queue>:leased[:p], rescored)
  local members = moved[source.suffix .. "\0" .. i]
  if not members then
    members = { queue = i, suffix = source.suffix, ids = {}, deadlines = {} }
    moved[source.suffix .. "\0" .. i] = members
  end
  local ids = members.ids
  ids[#ids + 1] = id
  if job.err then
    quarantine(job_key, id, ARGV[i])
    redis.call("ZREM", leased_key, id)
  elseif job[1] then
    token = token + 1
    local attempt = (tonumber(job[3]) or 0) + 1
    local deadline = deadline_of[i]
    if job[4] then -- the job's own lease seconds
      deadline = string.format("%.17g", now + (tonumber(job[4]) or 0))
    end
    -- the deadline twice: in the hash for commit's checks, in <queue>:leased for lease and stats;
    -- the worker, the lease's start and its extensions for leases() and job()
    redis.call("HSET", job_key, "a", attempt, "t", token, "d", deadline, "w", worker, "l", now_s, "x", 0)
    local deadlines = members.deadlines
    deadlines[#deadlines + 1] = deadline
    deadlines[#deadlines + 1] = id
    local n = #leased
    leased[n + 1], leased[n + 2], leased[n + 3] = id, ARGV[i], job[1]
    -- (a missing enqueued_at must not leave a hole: the reply would end there)
    leased[n + 4], leased[n + 5], leased[n + 6] = attempt, token, job[2] or now_s
    leased[n + 7] = deadline
  else
    if redis.call("EXISTS", job_key) == 1 then -- a hash without its body
      quarantine(job_key, id, ARGV[i])
    end
    -- (a member without its job hash cannot be leased: dropped)
    redis.call("ZREM", leased_key, id)
  end
end

-- in slices: Lua's unpack() is limited to a few thousand values
local function call_in_slices(command, key, values)
  for first = 1, #values, 2000 do
    redis.call(command, key, unpack(values, first, math.min(first + 1999, #values)))
  end
end

local worked, seen = {}, {}
for _, members in pairs(moved) do
  local queue = ARGV[members.queue]
  local tag = prefix .. ":{" .. queue .. "}:"
  call_in_slices("ZREM", tag .. "jobs" .. members.suffix, members.ids)
  call_in_slices("ZADD", tag .. "leased" .. members.suffix, members.deadlines)
  if not seen[queue] then
    seen[queue] = true
    worked[#worked + 1] = queue
  end
end
if #worked > 0 then
  -- the queues leases() and prune_counts() visit (few: one member per queue ever leased from);
  -- pcall, last: the jobs are leased by now, and a corrupt key must not turn that into an error
  local worked_key = prefix .. ":worked"
  if type(redis.pcall("SADD", worked_key, unpack(worked))) == "table" then
    problems[#problems + 1] = worked_key .. " holds a " .. redis.call("TYPE", worked_key).ok
      .. ", not a set: leases() and prune_counts() miss the queues it should name"
  end
end
return { leased, problems }
