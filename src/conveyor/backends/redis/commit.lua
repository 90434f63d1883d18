-- Apply a batch of commits, each atomically and independently (the whole script is atomic;
-- a commit is checked completely before any of its writes, so a rejected one writes nothing).
--
-- ARGV: prefix, now, idempotency retention (seconds), number of commits, then per commit:
--   head            outcome: "-" (no settlement), "a" ack, "r" retry, "d" dead, "l" release,
--                   then, if there are effects, " <states> <cancels> <jobs> <events> <history>"
--   settlement      job id, token; retry adds available_at ("" = now);
--                   dead adds error type, message, traceback ("" = none, else "=" .. text)
--   states          key, op ("s" set / "d" delete), value, expected version ("" = unchecked)
--   cancels         queue, idempotency key
--   jobs            id, queue, body, available_at, enqueued_at, key ("" = none, else "=" .. key)
--   events          id, event, body, emitted_at
--   history         correlation id, at, entry (JSON text, opaque here)
-- Reply: { results, queues that got due jobs }, a result being {1} stale, {2} conflict, or
-- {0, deliveries, index, id, ...} listing only the new jobs whose id an idempotency key replaced.

local prefix, now_s = ARGV[1], ARGV[2]
local now, retention = tonumber(now_s), tonumber(ARGV[3])
local commit_count = tonumber(ARGV[4])
local job_prefix, history_prefix = prefix .. ":job:", prefix .. ":history:"

local due_queues = {}
local routes = {}
local pending_adds = {}
local new_instances = {}
-- Acked and dead jobs leave <queue>:leased in one ZREM per queue at the end of the batch; until
-- then `unleased` marks them (no job of that id can be leased again within this script).
local unleased, unleased_by_queue = {}, {}

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

-- the sorted-set writes of one commit, batched: one ZADD per queue and one for the history index
local function flush_adds()
  for queue, members in pairs(pending_adds) do
    call_in_slices("ZADD", queue_key(queue, "jobs"), members)
  end
  pending_adds = {}
  call_in_slices("ZADD", prefix .. ":history", new_instances, "LT")
  new_instances = {}
end

local function add_to_queue(queue, available_at, id)
  local members = pending_adds[queue]
  if not members then
    members = {}
    pending_adds[queue] = members
  end
  members[#members + 1] = available_at
  members[#members + 1] = id
  if tonumber(available_at) <= now then
    due_queues[queue] = true
  end
end

local function unlease_later(queue, id)
  unleased[id] = true
  local ids = unleased_by_queue[queue]
  if not ids then
    ids = {}
    unleased_by_queue[queue] = ids
  end
  ids[#ids + 1] = id
end

local function lease_deadline(queue, id)
  if unleased[id] then
    return nil
  end
  local deadline = redis.call("ZSCORE", queue_key(queue, "leased"), id)
  return deadline and tonumber(deadline)
end

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
  -- attempts and token appear with the first lease: fewer fields make enqueue cheaper
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
  if outcome == "a" then
    redis.call("DEL", job_key)
    unlease_later(queue, id)
    retire_key(queue, id, key)
  elseif outcome == "d" then
    -- the job hash becomes the dead letter (no copy of the body)
    local dead_key = prefix .. ":dead:" .. id
    redis.call("RENAME", job_key, dead_key)
    unlease_later(queue, id)
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
    if outcome == "l" then
      redis.call("HINCRBY", job_key, "a", -1)
      add_to_queue(queue, now_s, id)
    elseif fields[1] == "" then
      add_to_queue(queue, now_s, id)
    else
      add_to_queue(queue, fields[1], id)
    end
  end
end

local results = {}
local i = 5
for c = 1, commit_count do
  local head = ARGV[i]
  local outcome = string.sub(head, 1, 1)
  local states, cancels, jobs, events, history = 0, 0, 0, 0, 0
  if #head > 1 then
    states, cancels, jobs, events, history = string.match(head, " (%d+) (%d+) (%d+) (%d+) (%d+)")
    states, cancels, jobs = tonumber(states), tonumber(cancels), tonumber(jobs)
    events, history = tonumber(events), tonumber(history)
  end
  i = i + 1

  local status = 0
  local settled_id, settled_queue, settled_key, fields
  if outcome ~= "-" then
    settled_id = ARGV[i]
    local token = tonumber(ARGV[i + 1])
    i = i + 2
    if outcome == "r" then
      fields = { ARGV[i] }
      i = i + 1
    elseif outcome == "d" then
      fields = { ARGV[i], ARGV[i + 1], ARGV[i + 2] }
      i = i + 3
    end
    local job = redis.call("HMGET", job_prefix .. settled_id, "t", "q", "k")
    if not job[1] or tonumber(job[1]) ~= token then
      status = 1
    else
      settled_queue, settled_key = job[2], job[3]
      local deadline = lease_deadline(settled_queue, settled_id)
      if not deadline or deadline < now then
        status = 1
      end
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

  if status ~= 0 then
    results[c] = { status }
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
    for s = i, i + 2 * cancels - 1, 2 do
      local queue = ARGV[s]
      local idem_key = queue_key(queue, "idem:" .. ARGV[s + 1])
      local holder = key_holder(idem_key)
      if holder and not lease_deadline(queue, holder) then
        local job_key = job_prefix .. holder
        if redis.call("EXISTS", job_key) == 1 then
          redis.call("DEL", job_key, idem_key)
          redis.call("ZREM", queue_key(queue, "jobs"), holder)
        end
      end
    end
    i = i + 2 * cancels
    local result = { 0, 0 }
    for j = 1, jobs do
      local id = ARGV[i]
      local stored = enqueue(id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], optional(ARGV[i + 5]))
      if stored ~= id then
        result[#result + 1] = j
        result[#result + 1] = stored
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
    result[2] = deliveries
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
    flush_adds()
    results[c] = result
  end
end

for queue, ids in pairs(unleased_by_queue) do
  call_in_slices("ZREM", queue_key(queue, "leased"), ids)
end

local woken = {}
for queue in pairs(due_queues) do
  redis.call("PUBLISH", queue_key(queue, "notify"), "")
  woken[#woken + 1] = queue
end
return { results, woken }
