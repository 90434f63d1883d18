-- Apply a batch of commits, each atomically and independently (the whole script is atomic).
--
-- ARGV: prefix, now, idempotency retention (seconds), number of commits, the sender's tag (the
-- payload of the wake-up it publishes, so its own notifier can ignore it), then per commit:
--   head            outcome: "-" (no settlement), "a" ack, "r" retry, "d" dead, "l" release,
--                   then, if there are effects, the counts of states, cancels, jobs, events
--                   and history entries as five big-endian uint32 (struct ">I4I4I4I4I4")
--   settlement      job id, token; retry adds available_at ("" = now) and error type ("" = no
--                   error), message, traceback; dead adds error type, message, traceback
--                   (traceback "" = none, else "=" .. text)
--   states          key, op ("s" set / "d" delete), value, expected version ("" = unchecked)
--   cancels         queue, idempotency key
--   jobs            id, queue, body, available_at, enqueued_at, key ("" = none, else "=" .. key),
--                   options ("" = priority 0 and the queue's lease, else "<priority> <lease
--                   seconds or ->")
--   events          id, event, body, emitted_at
--   history         correlation id, at, message id ("" = none, else "=" .. id), entry (JSON
--                   text, opaque here)
-- Reply: { results, queues that got due jobs, rejected, repaired }. Results are flat, per commit:
-- status (0 ok, 1 stale, 2 conflict), deliveries, n, then n (index, id) pairs: the new jobs whose
-- id an idempotency key replaced. Rejected is empty, or (commit number, message) pairs: then the
-- batch wrote nothing at all, and results and queues are empty. Repaired lists a message per
-- history key or dead-letter index of the wrong type that was moved aside (for the caller to log).
--
-- Redis does not undo a script's writes when one of its commands fails, so nothing is written
-- before every commit of the batch is checked. Phase 1 reads every key a commit would read or
-- write and rejects the batch if one is of the wrong type (a key written by something else than
-- conveyor, on which a command would fail with WRONGTYPE) or holds a value that cannot be parsed,
-- naming the key: the caller then splits the batch so that the other commits apply. Phase 2
-- applies the batch; a stale token or a version conflict, which can come from an earlier commit
-- of the same batch, rejects that commit alone, before any of its writes. Phase 2 reuses phase 1's
-- reads and keeps them current as it writes (a job acked by one commit is gone for the next).
--
-- History is a record that nothing else depends on: a history list or index of the wrong type is
-- moved aside (renamed <prefix>:corrupt:...) when a write to it fails, and the write made again,
-- so it costs no check per entry and fails no commit. The dead-letter indexes (<prefix>:dead,
-- <queue>:dead) are treated the same way: they only list the dead letters, and rejecting a dead
-- letter for them would lease its job again forever, each attempt refused the same way.
--
-- A leased job's hash holds its lease deadline in field d (and <queue>:leased the same score);
-- no d means not leased. A job of priority p ~= 0 (field p) waits in <queue>:jobs:<p> and is
-- leased in <queue>:leased:<p>, its lane, which <queue>:control names (field <p>) while it is in
-- use; lane 0 is <queue>:jobs and <queue>:leased.
--
-- Each OK settlement but a release is counted per queue in the minute of `now`: one HINCRBY per
-- queue and outcome per batch on <queue>:counts:<minute>, whose minute <queue>:counts indexes.
-- Like history, counts are a record: a corrupt count key is moved aside, never fails a commit.

local prefix, now_s = ARGV[1], ARGV[2]
local now, retention = tonumber(now_s), tonumber(ARGV[3])
local commit_count = tonumber(ARGV[4])
local sender = ARGV[5]
local job_prefix, history_prefix = prefix .. ":job:", prefix .. ":history:"
local history_index = prefix .. ":history"
local NONE, ACK, RETRY, DEAD, RELEASE = string.byte("-ardl", 1, 5)

local function queue_key(queue, suffix)
  return prefix .. ":{" .. queue .. "}:" .. suffix
end

-- Phase 1's reads, by key, for phase 2, which keeps them current as it writes.
local job_of = {} -- job key -> its fields t, d, q, k, p (false: none)
local holder_of = {} -- idempotency key -> its value (false: none)
local version_of = {} -- state key -> its version (0: none)
local type_of = {} -- key -> its TYPE, for keys that are written without being read
local set_checked = {} -- key -> true: a sorted set (or missing)
local settled_key, settled_job = {}, {} -- commit number -> its settled job's key and fields
local routes = {} -- event -> subscribed queues

-- An idempotency key's value is "<expires_at> <job id>", expires_at "-" while the job exists.
-- Expiry is judged against the caller's clock; the key's TTL only collects garbage.
local function parse_holder(value)
  local space = string.find(value, " ", 1, true)
  if not space or space == #value then
    return nil
  end
  local expires_at = string.sub(value, 1, space - 1)
  if expires_at ~= "-" and not tonumber(expires_at) then
    return nil
  end
  return expires_at, string.sub(value, space + 1)
end

-- a commit's head: its outcome and the counts of its states, cancels, jobs, events, history
local function parse_head(head)
  if #head > 1 then
    return string.byte(head, 1), struct.unpack(">I4I4I4I4I4", head, 2)
  end
  return string.byte(head, 1), 0, 0, 0, 0, 0
end

-- a new job's options: its priority (text, "0" if none) and its own lease seconds (text or nil)
local function parse_options(options)
  if options == "" then
    return "0", nil
  end
  local priority, seconds = string.match(options, "^(%S+) (%S+)$")
  if seconds == "-" then
    seconds = nil
  end
  return priority, seconds
end

-- phase 1: checks, no writes

local problem -- the first corrupt key of the commit being checked

local function shown(value)
  return string.format("%q", string.sub(value, 1, 80))
end

-- true (and the problem noted) if `reply`, of redis.pcall on `key`, is an error
local function failed(reply, key, what)
  if type(reply) == "table" and reply.err then
    problem = key .. " holds a " .. redis.call("TYPE", key).ok .. ", not " .. what
    return true
  end
  return false
end

local function check_type(key, expected, what)
  if problem then
    return
  end
  local kind = type_of[key]
  if not kind then
    kind = redis.call("TYPE", key).ok
    type_of[key] = kind
  end
  if kind ~= expected and kind ~= "none" then
    problem = key .. " holds a " .. kind .. ", not " .. what
  end
end

local ZSET = "a sorted set"

-- the suffix of a lane's keys: "" for priority 0, ":<p>" for another
local function lane(priority)
  if not priority or priority == "0" or priority == 0 then
    return ""
  end
  return ":" .. priority
end

-- <queue>:<suffix> must be a sorted set (or missing)
local function check_set(queue, suffix)
  local key = queue_key(queue, suffix)
  if not set_checked[key] and not problem then
    check_type(key, "zset", ZSET)
    set_checked[key] = not problem
  end
end

-- the lane of priority `priority` in `queue`: its waiting set, and the control hash naming it
local function check_lane(queue, priority)
  local suffix = lane(priority)
  check_set(queue, "jobs" .. suffix)
  if suffix ~= "" then
    check_type(queue_key(queue, "control"), "hash", "a queue's control hash")
  end
end

local function check_job(job_key)
  if problem then
    return nil
  end
  local job = job_of[job_key]
  if not job then
    job = redis.pcall("HMGET", job_key, "t", "d", "q", "k", "p")
    if failed(job, job_key, "a job hash") then
      return nil
    end
    job_of[job_key] = job
  end
  return job
end

local function check_holder(idem_key)
  if problem or holder_of[idem_key] ~= nil then
    return
  end
  local value = redis.pcall("GET", idem_key)
  if failed(value, idem_key, "an idempotency key (a string)") then
    return
  end
  if value and not parse_holder(value) then
    problem = idem_key .. " holds " .. shown(value) .. ", not \"<expires_at> <job id>\""
    return
  end
  holder_of[idem_key] = value
end

local function check_version(state_key)
  if problem or version_of[state_key] then
    return
  end
  local n = redis.pcall("HGET", state_key, "n")
  if failed(n, state_key, "a state hash") then
    return
  end
  local version = 0
  if n then
    version = tonumber(n)
  end
  if version and version >= 0 and version < 2 ^ 53 and version == math.floor(version) then
    version_of[state_key] = version
  else
    problem = "field n of " .. state_key .. " holds " .. shown(n) .. ", not a version number"
  end
end

-- commit number c, starting at ARGV[i]: sets `problem` if it needs a corrupt key; returns the next one's i
local function check(c, i)
  local outcome, states, cancels, jobs, events, history = parse_head(ARGV[i])
  i = i + 1
  if outcome ~= NONE then
    local job_key, token = job_prefix .. ARGV[i], ARGV[i + 1]
    i = i + 2
    if outcome == RETRY then
      i = i + 4
    elseif outcome == DEAD then
      i = i + 3
    end
    local job = check_job(job_key)
    settled_key[c], settled_job[c] = job_key, job
    if job and job[2] and job[1] == token then -- the live lease: the settlement will write
      local queue = job[3]
      if not queue then
        problem = job_key .. " has no field q (its queue)"
      else
        check_set(queue, "leased" .. lane(job[5]))
        if outcome == RETRY or outcome == RELEASE then
          check_lane(queue, job[5])
        end -- (a dead letter's indexes and the counts need no check: see the top)
      end
    end
  end
  for s = i, i + 4 * states - 1, 4 do
    -- a delete needs no read, unless it checks the version
    if ARGV[s + 1] ~= "d" or ARGV[s + 3] ~= "" then
      check_version(prefix .. ":state:" .. ARGV[s])
    end
  end
  i = i + 4 * states
  for s = i, i + 2 * cancels - 1, 2 do
    local idem_key = queue_key(ARGV[s], "idem:" .. ARGV[s + 1])
    check_holder(idem_key)
    local value = holder_of[idem_key]
    if value then
      local _, holder = parse_holder(value)
      local job = check_job(job_prefix .. holder)
      if job and job[3] then
        check_set(job[3], "jobs" .. lane(job[5]))
      end
    end
  end
  i = i + 2 * cancels
  for s = i, i + 7 * jobs - 1, 7 do
    local queue, key = ARGV[s + 1], ARGV[s + 5]
    if key ~= "" then
      check_holder(queue_key(queue, "idem:" .. string.sub(key, 2)))
    end
    check_lane(queue, parse_options(ARGV[s + 6]))
  end
  i = i + 7 * jobs
  for e = i + 1, i + 4 * events - 1, 4 do
    local event = ARGV[e]
    local queues = routes[event]
    if not queues and not problem then
      local sub_key = prefix .. ":sub:" .. event
      queues = redis.pcall("SMEMBERS", sub_key)
      if failed(queues, sub_key, "a set") then
        queues = nil
      else
        routes[event] = queues
      end
    end
    for _, queue in ipairs(queues or {}) do
      check_set(queue, "jobs")
    end
  end
  i = i + 4 * events
  return i + 4 * history -- (history needs no check: see the top)
end

local rejected = {}
local i = 6
for c = 1, commit_count do
  problem = nil
  i = check(c, i)
  if problem then
    rejected[#rejected + 1] = c
    rejected[#rejected + 1] = problem
  end
end
if #rejected > 0 then
  return { {}, {}, rejected, {} }
end

-- phase 2: apply (every key written below was checked above, or written by this script)

local due_queues = {}
-- Sorted-set writes, batched: new members of <queue>:jobs per commit (a later commit's cancel
-- must see them), the history index and the removals from <queue>:leased once at the end.
local pending_adds, adds_pending = {}, false
local new_instances = {}
local unleased = {}
local repaired = {}

-- `command key values...` in slices: Lua's unpack() is limited to a few thousand values
local function call_in_slices(command, key, values)
  for first = 1, #values, 2000 do
    redis.call(command, key, unpack(values, first, math.min(first + 1999, #values)))
  end
end

local function append_to(lists, name, a, b)
  local list = lists[name]
  if not list then
    list = {}
    lists[name] = list
  end
  list[#list + 1] = a
  if b then
    list[#list + 1] = b
  end
end

-- `id` into its lane of `queue` (priority: text, or nil for 0), waiting until `available_at`
local function add_to_queue(queue, priority, available_at, id)
  local suffix = lane(priority)
  if suffix ~= "" then
    -- (every time: lease.lua forgets a lane it finds empty)
    redis.call("HSET", queue_key(queue, "control"), priority, 1)
  end
  append_to(pending_adds, queue_key(queue, "jobs" .. suffix), available_at, id)
  adds_pending = true
  if tonumber(available_at) <= now then
    due_queues[queue] = true
  end
end

-- A history key or dead-letter index of the wrong type, on which `reply` (of redis.pcall)
-- failed: moved aside to <prefix>:corrupt:<name>, so that the write can be made again
local function set_aside(reply, name, record)
  if type(reply) == "table" and reply.err then
    local key, aside = prefix .. ":" .. name, prefix .. ":corrupt:" .. name
    repaired[#repaired + 1] = key .. " holds a " .. redis.call("TYPE", key).ok .. ", not what the "
      .. record .. " keeps there: moved to " .. aside .. ", the " .. record .. " starts over"
    redis.call("RENAME", key, aside)
    return true
  end
  return false
end

-- a dead letter's entry in an index (<prefix>:<name>), the index set aside if it is corrupt
local function index_dead(name, id)
  if set_aside(redis.pcall("ZADD", prefix .. ":" .. name, now_s, id), name, "dead-letter index") then
    redis.call("ZADD", prefix .. ":" .. name, now_s, id)
  end
end

local function flush_adds()
  for key, members in pairs(pending_adds) do
    call_in_slices("ZADD", key, members)
  end
  pending_adds, adds_pending = {}, false
end

-- a job's fields t, d, q, k, p: `job`, phase 1's read kept current, or read now; nil for a key
-- phase 1 did not read that is not a hash (lease.lua dead-letters such a job)
local function job_fields(job_key, job)
  if not job then
    job = redis.pcall("HMGET", job_key, "t", "d", "q", "k", "p")
    if job.err then
      return nil
    end
  end
  return job
end

local function key_holder(idem_key)
  local value = holder_of[idem_key]
  if value == nil then
    value = redis.call("GET", idem_key)
  end
  if not value then
    return nil
  end
  local expires_at, holder = parse_holder(value)
  if expires_at ~= "-" and tonumber(expires_at) <= now then
    redis.call("DEL", idem_key)
    holder_of[idem_key] = false
    return nil
  end
  return holder
end

local function retire_key(queue, id, key)
  if not key then
    return
  end
  local idem_key = queue_key(queue, "idem:" .. key)
  local value = false
  if retention > 0 then
    value = string.format("%.17g", now + retention) .. " " .. id
    redis.call("SET", idem_key, value, "PX", math.ceil(retention * 1000))
  else
    redis.call("DEL", idem_key)
  end
  if holder_of[idem_key] ~= nil then -- (only a key phase 1 read can be read again)
    holder_of[idem_key] = value
  end
end

local function enqueue(id, queue, body, available_at, enqueued_at, key, options)
  if key then
    local idem_key = queue_key(queue, "idem:" .. key)
    local holder = key_holder(idem_key)
    if holder then
      return holder
    end
    holder_of[idem_key] = "- " .. id
    redis.call("SET", idem_key, holder_of[idem_key])
  end
  local job_key = job_prefix .. id
  if redis.call("EXISTS", job_key) == 1 then
    return id
  end
  -- attempts, token and deadline appear with the first lease, priority and lease seconds only
  -- when set: fewer fields, cheaper enqueue
  if key then
    redis.call("HSET", job_key, "q", queue, "b", body, "e", enqueued_at, "k", key)
  else
    redis.call("HSET", job_key, "q", queue, "b", body, "e", enqueued_at)
  end
  local priority, seconds = nil, nil
  if options and options ~= "" then
    priority, seconds = parse_options(options)
    if priority ~= "0" then
      redis.call("HSET", job_key, "p", priority)
    else
      priority = nil
    end
    if seconds then
      redis.call("HSET", job_key, "s", seconds)
    end
  end
  local cached = job_of[job_key]
  if cached then
    cached[1], cached[2], cached[3], cached[4], cached[5] = false, false, queue, key or false, priority or false
  end
  add_to_queue(queue, priority, available_at, id)
  return id
end

local function optional(value)
  if value == "" then
    return nil
  end
  return string.sub(value, 2)
end

-- settlements counted per queue: queue -> { completed, retried, dead }
local counted, COLUMN = {}, { [ACK] = 1, [RETRY] = 2, [DEAD] = 3 }

local function settle(outcome, id, job_key, job, fields)
  local queue, key, priority = job[3], job[4], job[5]
  local leased_key = queue_key(queue, "leased" .. lane(priority))
  if outcome == ACK or outcome == DEAD then
    job[1], job[2], job[3] = false, false, false -- gone, for a later commit of the batch
  else
    job[2] = false -- no longer leased
  end
  local column = COLUMN[outcome]
  if column then
    local counts = counted[queue]
    if not counts then
      counts = { 0, 0, 0 }
      counted[queue] = counts
    end
    counts[column] = counts[column] + 1
  end
  if outcome == ACK then
    redis.call("DEL", job_key)
    append_to(unleased, leased_key, id)
    retire_key(queue, id, key)
  elseif outcome == DEAD then
    -- the job hash becomes the dead letter (no copy of the body)
    local dead_key = prefix .. ":dead:" .. id
    local earlier = redis.pcall("HGET", dead_key, "q") -- (a dead letter not a hash is replaced)
    if type(earlier) == "string" and earlier ~= queue then
      -- the dead letter this one replaces (same id) was of another queue
      redis.pcall("ZREM", queue_key(earlier, "dead"), id)
    end
    redis.call("RENAME", job_key, dead_key)
    append_to(unleased, leased_key, id)
    redis.call("HSET", dead_key, "f", now_s, "et", fields[1], "em", fields[2])
    local traceback = optional(fields[3])
    if traceback then
      redis.call("HSET", dead_key, "tb", traceback)
    end
    index_dead("dead", id)
    index_dead("{" .. queue .. "}:dead", id)
    retire_key(queue, id, key)
  else
    redis.call("ZREM", leased_key, id)
    if outcome == RELEASE then
      -- the attempt given back (HSET, not HINCRBY: a hand-edited count cannot fail the script)
      local attempts = tonumber(redis.call("HGET", job_key, "a")) or 1
      redis.call("HSET", job_key, "a", math.max(0, attempts - 1))
      redis.call("HDEL", job_key, "d")
      add_to_queue(queue, priority, now_s, id)
    else
      redis.call("HDEL", job_key, "d")
      if fields[2] ~= "" then -- the error, kept as the job's last (le, lm, lt)
        redis.call("HSET", job_key, "le", fields[2], "lm", fields[3])
        local traceback = optional(fields[4])
        if traceback then
          redis.call("HSET", job_key, "lt", traceback)
        else
          redis.call("HDEL", job_key, "lt")
        end
      end
      add_to_queue(queue, priority, fields[1] == "" and now_s or fields[1], id)
    end
  end
end

-- An entry of instance `correlation_id`, and in <prefix>:jobhistory:<message id> (the index of
-- job_history: the instances that hold the job's entries, one member per entry). The index
-- <prefix>:history scores an instance by its first entry's time, for pruning; later entries are
-- (nearly always) newer. One written with an older time is pruned a round later.
local function write_history(correlation_id, at, message_id, entry)
  local key = history_prefix .. correlation_id
  local pushed = redis.pcall("RPUSH", key, entry)
  if set_aside(pushed, "history:" .. correlation_id, "history") then
    pushed = redis.call("RPUSH", key, entry)
  end
  if pushed == 1 then
    new_instances[#new_instances + 1] = at
    new_instances[#new_instances + 1] = correlation_id
  end
  if message_id ~= "" then
    local name = "jobhistory:" .. string.sub(message_id, 2)
    if set_aside(redis.pcall("RPUSH", prefix .. ":" .. name, correlation_id), name, "job history index") then
      redis.call("RPUSH", prefix .. ":" .. name, correlation_id)
    end
  end
end

local results = {}
i = 6
for c = 1, commit_count do
  local outcome, states, cancels, jobs, events, history = parse_head(ARGV[i])
  i = i + 1

  local status = 0
  local settled_id, live_job, fields
  if outcome ~= NONE then
    settled_id = ARGV[i]
    local token = ARGV[i + 1]
    i = i + 2
    if outcome == RETRY then
      fields = { ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] }
      i = i + 4
    elseif outcome == DEAD then
      fields = { ARGV[i], ARGV[i + 1], ARGV[i + 2] }
      i = i + 3
    end
    -- tokens are integers written the same way by Python and by lease.lua: compare as text
    local job = job_fields(settled_key[c], settled_job[c])
    if not job or not job[2] or job[1] ~= token or (tonumber(job[2]) or 0) < now then
      status = 1
    else
      live_job = job
    end
  end
  if status == 0 then
    for s = i, i + 4 * states - 1, 4 do
      local expected = ARGV[s + 3]
      if expected ~= "" and version_of[prefix .. ":state:" .. ARGV[s]] ~= tonumber(expected) then
        status = 2
        break
      end
    end
  end

  local n = #results
  results[n + 1], results[n + 2], results[n + 3] = status, 0, 0
  if status ~= 0 then
    i = i + 4 * states + 2 * cancels + 7 * jobs + 4 * events + 4 * history
  else
    -- from here on nothing is checked: apply everything
    if settled_id then
      settle(outcome, settled_id, settled_key[c], live_job, fields)
    end
    for s = i, i + 4 * states - 1, 4 do
      local state_key = prefix .. ":state:" .. ARGV[s]
      if ARGV[s + 1] == "d" then
        redis.call("DEL", state_key)
        version_of[state_key] = 0
      else
        local version = version_of[state_key] + 1
        redis.call("HSET", state_key, "v", ARGV[s + 2], "n", version)
        version_of[state_key] = version
      end
    end
    i = i + 4 * states
    if cancels > 0 and adds_pending then
      flush_adds() -- a cancel may hit the job this commit's settlement just put back
    end
    for s = i, i + 2 * cancels - 1, 2 do
      local idem_key = queue_key(ARGV[s], "idem:" .. ARGV[s + 1])
      local holder = key_holder(idem_key)
      if holder then
        local job_key = job_prefix .. holder
        local job = job_fields(job_key, job_of[job_key])
        if job and job[3] and not job[2] then -- a pending job, not a leased one
          redis.call("DEL", job_key, idem_key)
          -- its own queue: an id enqueued on two queues exists once, on the first
          redis.pcall("ZREM", queue_key(job[3], "jobs" .. lane(job[5])), holder)
          job[1], job[3], holder_of[idem_key] = false, false, false
        end
      end
    end
    i = i + 2 * cancels
    for j = 1, jobs do
      local id = ARGV[i]
      local stored = enqueue(
        id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], optional(ARGV[i + 5]), ARGV[i + 6]
      )
      if stored ~= id then
        results[#results + 1] = j
        results[#results + 1] = stored
        results[n + 3] = results[n + 3] + 1
      end
      i = i + 7
    end
    local deliveries = 0
    for e = i, i + 4 * events - 1, 4 do
      local queues = routes[ARGV[e + 1]]
      for _, queue in ipairs(queues) do
        enqueue(ARGV[e] .. ":" .. queue, queue, ARGV[e + 2], ARGV[e + 3], ARGV[e + 3], nil)
      end
      deliveries = deliveries + #queues
    end
    results[n + 2] = deliveries
    i = i + 4 * events
    for h = i, i + 4 * history - 1, 4 do
      write_history(ARGV[h], ARGV[h + 1], ARGV[h + 2], ARGV[h + 3])
    end
    i = i + 4 * history
    if adds_pending then
      flush_adds()
    end
  end
end

for first = 1, #new_instances, 2000 do
  local last = math.min(first + 1999, #new_instances)
  local added = redis.pcall("ZADD", history_index, "LT", unpack(new_instances, first, last))
  if set_aside(added, "history", "history") then
    redis.call("ZADD", history_index, "LT", unpack(new_instances, first, last))
  end
end
for leased_key, ids in pairs(unleased) do
  call_in_slices("ZREM", leased_key, ids)
end
if next(counted) then
  local minute = math.floor(now / 60) * 60
  local minute_s = string.format("%.17g", minute)
  for queue, counts in pairs(counted) do
    local name = "{" .. queue .. "}:counts:" .. minute_s
    for column, field in ipairs({ "c", "r", "d" }) do
      if counts[column] > 0 then
        local key = prefix .. ":" .. name
        if set_aside(redis.pcall("HINCRBY", key, field, counts[column]), name, "settlement counts") then
          redis.call("HINCRBY", key, field, counts[column])
        end
      end
    end
    local index = "{" .. queue .. "}:counts"
    if set_aside(redis.pcall("ZADD", prefix .. ":" .. index, minute, minute_s), index, "settlement counts") then
      redis.call("ZADD", prefix .. ":" .. index, minute, minute_s)
    end
  end
end
local woken = {}
for queue in pairs(due_queues) do
  redis.call("PUBLISH", queue_key(queue, "notify"), sender)
  woken[#woken + 1] = queue
end
return { results, woken, {}, repaired }
