-- Apply a batch of commits, each atomically and independently (the whole script is atomic;
-- a commit is checked completely before any of its writes, so a rejected one writes nothing).
--
-- ARGV: prefix, now, idempotency retention (seconds), number of commits, the sender's tag (the
-- payload of the wake-up it publishes, so its own notifier can ignore it), then per commit:
--   head            outcome: "-" (no settlement), "a" ack, "r" retry, "d" dead, "l" release,
--                   then, if there are effects, the counts of states, cancels, jobs, events
--                   and history entries as five big-endian uint32 (struct ">I4I4I4I4I4")
--   settlement      job id, token; retry adds available_at ("" = now);
--                   dead adds error type, message, traceback ("" = none, else "=" .. text)
--   states          key, op ("s" set / "d" delete), value, expected version ("" = unchecked)
--   cancels         queue, idempotency key
--   jobs            id, queue, body, available_at, enqueued_at, key ("" = none, else "=" .. key)
--   events          id, event, body, emitted_at
--   history         correlation id, at, entry (JSON text, opaque here)
-- Reply: { results, queues that got due jobs }. Results are flat, per commit: status (0 ok,
-- 1 stale, 2 conflict), deliveries, n, then n (index, id) pairs: the new jobs whose id an
-- idempotency key replaced.
--
-- A leased job's hash holds its lease deadline in field d (and <queue>:leased the same score);
-- no d means not leased.

local prefix, now_s = ARGV[1], ARGV[2]
local now, retention = tonumber(now_s), tonumber(ARGV[3])
local commit_count = tonumber(ARGV[4])
local sender = ARGV[5]
local job_prefix, history_prefix = prefix .. ":job:", prefix .. ":history:"
local NONE, ACK, RETRY, DEAD, RELEASE = string.byte("-ardl", 1, 5)

local due_queues = {}
local routes = {}
-- Sorted-set writes, batched: new members of <queue>:jobs per commit (a later commit's cancel
-- must see them), the history index and the removals from <queue>:leased once at the end.
local pending_adds, adds_pending = {}, false
local new_instances = {}
local unleased = {}

local function queue_key(queue, suffix)
  return prefix .. ":{" .. queue .. "}:" .. suffix
end

-- `command key [option] values...` in slices: Lua's unpack() is limited to a few thousand values
local function call_in_slices(command, key, values, option)
  for first = 1, #values, 2000 do
    local last = math.min(first + 1999, #values)
    if option then
      redis.call(command, key, option, unpack(values, first, last))
    else
      redis.call(command, key, unpack(values, first, last))
    end
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

local function add_to_queue(queue, available_at, id)
  append_to(pending_adds, queue, available_at, id)
  adds_pending = true
  if tonumber(available_at) <= now then
    due_queues[queue] = true
  end
end

local function flush_adds()
  for queue, members in pairs(pending_adds) do
    call_in_slices("ZADD", queue_key(queue, "jobs"), members)
  end
  pending_adds, adds_pending = {}, false
end

-- An idempotency key's value is "<expires_at> <job id>", expires_at "-" while the job exists.
-- Expiry is judged against the caller's clock; the key's TTL only collects garbage.
local function key_holder(idem_key)
  local value = redis.call("GET", idem_key)
  if not value then
    return nil
  end
  local space = string.find(value, " ", 1, true)
  local expires_at = string.sub(value, 1, space - 1)
  if expires_at ~= "-" and tonumber(expires_at) <= now then
    redis.call("DEL", idem_key)
    return nil
  end
  return string.sub(value, space + 1)
end

local function retire_key(queue, id, key)
  if not key then
    return
  end
  local idem_key = queue_key(queue, "idem:" .. key)
  if retention > 0 then
    redis.call("SET", idem_key, string.format("%.17g", now + retention) .. " " .. id,
      "PX", math.ceil(retention * 1000))
  else
    redis.call("DEL", idem_key)
  end
end

local function enqueue(id, queue, body, available_at, enqueued_at, key)
  if key then
    local idem_key = queue_key(queue, "idem:" .. key)
    local holder = key_holder(idem_key)
    if holder then
      return holder
    end
    redis.call("SET", idem_key, "- " .. id)
  end
  local job_key = job_prefix .. id
  if redis.call("EXISTS", job_key) == 1 then
    return id
  end
  -- attempts, token and deadline appear with the first lease: fewer fields, cheaper enqueue
  if key then
    redis.call("HSET", job_key, "q", queue, "b", body, "e", enqueued_at, "k", key)
  else
    redis.call("HSET", job_key, "q", queue, "b", body, "e", enqueued_at)
  end
  add_to_queue(queue, available_at, id)
  return id
end

local function optional(value)
  if value == "" then
    return nil
  end
  return string.sub(value, 2)
end

local function settle(outcome, id, queue, key, fields)
  local job_key = job_prefix .. id
  if outcome == ACK then
    redis.call("DEL", job_key)
    append_to(unleased, queue, id)
    retire_key(queue, id, key)
  elseif outcome == DEAD then
    -- the job hash becomes the dead letter (no copy of the body)
    local dead_key = prefix .. ":dead:" .. id
    local earlier = redis.call("HGET", dead_key, "q")
    if earlier and earlier ~= queue then
      -- the dead letter this one replaces (same id) was of another queue
      redis.call("ZREM", queue_key(earlier, "dead"), id)
    end
    redis.call("RENAME", job_key, dead_key)
    append_to(unleased, queue, id)
    redis.call("HSET", dead_key, "f", now_s, "et", fields[1], "em", fields[2])
    local traceback = optional(fields[3])
    if traceback then
      redis.call("HSET", dead_key, "tb", traceback)
    end
    redis.call("ZADD", prefix .. ":dead", now_s, id)
    redis.call("ZADD", queue_key(queue, "dead"), now_s, id)
    retire_key(queue, id, key)
  else
    redis.call("ZREM", queue_key(queue, "leased"), id)
    if outcome == RELEASE then
      redis.call("HINCRBY", job_key, "a", -1)
      redis.call("HDEL", job_key, "d")
      add_to_queue(queue, now_s, id)
    else
      redis.call("HDEL", job_key, "d")
      add_to_queue(queue, fields[1] == "" and now_s or fields[1], id)
    end
  end
end

local results = {}
local i = 6
for _ = 1, commit_count do
  local head = ARGV[i]
  local outcome = string.byte(head, 1)
  local states, cancels, jobs, events, history = 0, 0, 0, 0, 0
  if #head > 1 then
    states, cancels, jobs, events, history = struct.unpack(">I4I4I4I4I4", head, 2)
  end
  i = i + 1

  local status = 0
  local settled_id, settled_queue, settled_key, fields
  if outcome ~= NONE then
    settled_id = ARGV[i]
    local token = ARGV[i + 1]
    i = i + 2
    if outcome == RETRY then
      fields = { ARGV[i] }
      i = i + 1
    elseif outcome == DEAD then
      fields = { ARGV[i], ARGV[i + 1], ARGV[i + 2] }
      i = i + 3
    end
    -- tokens are integers written the same way by Python and by lease.lua: compare as text
    local job = redis.call("HMGET", job_prefix .. settled_id, "t", "d", "q", "k")
    if not job[2] or job[1] ~= token or tonumber(job[2]) < now then
      status = 1
    else
      settled_queue, settled_key = job[3], job[4]
    end
  end
  if status == 0 then
    for s = i, i + 4 * states - 1, 4 do
      local expected = ARGV[s + 3]
      if expected ~= "" then
        local version = redis.call("HGET", prefix .. ":state:" .. ARGV[s], "n")
        if (tonumber(version) or 0) ~= tonumber(expected) then
          status = 2
          break
        end
      end
    end
  end

  local n = #results
  results[n + 1], results[n + 2], results[n + 3] = status, 0, 0
  if status ~= 0 then
    i = i + 4 * states + 2 * cancels + 6 * jobs + 4 * events + 3 * history
  else
    -- from here on nothing is checked: apply everything
    if settled_id then
      settle(outcome, settled_id, settled_queue, settled_key, fields)
    end
    for s = i, i + 4 * states - 1, 4 do
      local state_key = prefix .. ":state:" .. ARGV[s]
      if ARGV[s + 1] == "d" then
        redis.call("DEL", state_key)
      else
        redis.call("HINCRBY", state_key, "n", 1)
        redis.call("HSET", state_key, "v", ARGV[s + 2])
      end
    end
    i = i + 4 * states
    if cancels > 0 and adds_pending then
      flush_adds() -- a cancel may hit the job this commit's settlement just put back
    end
    for s = i, i + 2 * cancels - 1, 2 do
      local queue = ARGV[s]
      local idem_key = queue_key(queue, "idem:" .. ARGV[s + 1])
      local holder = key_holder(idem_key)
      if holder then
        local job_key = job_prefix .. holder
        local job = redis.call("HMGET", job_key, "q", "d")
        if job[1] and not job[2] then -- a pending job, not a leased one
          redis.call("DEL", job_key, idem_key)
          -- its own queue: an id enqueued on two queues exists once, on the first
          redis.call("ZREM", queue_key(job[1], "jobs"), holder)
        end
      end
    end
    i = i + 2 * cancels
    for j = 1, jobs do
      local id = ARGV[i]
      local stored = enqueue(id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], optional(ARGV[i + 5]))
      if stored ~= id then
        results[#results + 1] = j
        results[#results + 1] = stored
        results[n + 3] = results[n + 3] + 1
      end
      i = i + 6
    end
    local deliveries = 0
    for e = i, i + 4 * events - 1, 4 do
      local event = ARGV[e + 1]
      local queues = routes[event]
      if not queues then
        queues = redis.call("SMEMBERS", prefix .. ":sub:" .. event)
        routes[event] = queues
      end
      for _, queue in ipairs(queues) do
        enqueue(ARGV[e] .. ":" .. queue, queue, ARGV[e + 2], ARGV[e + 3], ARGV[e + 3], nil)
      end
      deliveries = deliveries + #queues
    end
    results[n + 2] = deliveries
    i = i + 4 * events
    for h = i, i + 3 * history - 1, 3 do
      -- The index scores an instance by its first entry's time, for pruning; later entries are
      -- (nearly always) newer. One written with an older time is pruned a round later.
      if redis.call("RPUSH", history_prefix .. ARGV[h], ARGV[h + 2]) == 1 then
        new_instances[#new_instances + 1] = ARGV[h + 1]
        new_instances[#new_instances + 1] = ARGV[h]
      end
    end
    i = i + 3 * history
    if adds_pending then
      flush_adds()
    end
  end
end

call_in_slices("ZADD", prefix .. ":history", new_instances, "LT")
for queue, ids in pairs(unleased) do
  call_in_slices("ZREM", queue_key(queue, "leased"), ids)
end
local woken = {}
for queue in pairs(due_queues) do
  redis.call("PUBLISH", queue_key(queue, "notify"), sender)
  woken[#woken + 1] = queue
end
return { results, woken }
