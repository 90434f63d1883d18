-- A live job or a dead letter by id (a live job first: a redelivered event may be both).
--
-- ARGV: prefix, id.
-- Reply: {"job", its hash's fields and values (HGETALL), available_at or false} or
-- {"dead", the dead letter hash's fields and values}, or {} if neither exists. A job not leased
-- has its available_at only as its score in its lane, <queue>:jobs[:<priority>].

local prefix, id = ARGV[1], ARGV[2]
local job_key = prefix .. ":job:" .. id
local fields = redis.call("HGETALL", job_key)
if #fields > 0 then
  local queue, priority, leased = nil, nil, false
  for f = 1, #fields, 2 do
    local name = fields[f]
    if name == "q" then
      queue = fields[f + 1]
    elseif name == "p" then
      priority = fields[f + 1]
    elseif name == "d" then
      leased = true
    end
  end
  local available_at = false
  if queue and not leased then
    local lane = ""
    if priority and priority ~= "0" then
      lane = ":" .. priority
    end
    available_at = redis.call("ZSCORE", prefix .. ":{" .. queue .. "}:jobs" .. lane, id) or false
  end
  return { "job", fields, available_at }
end
fields = redis.call("HGETALL", prefix .. ":dead:" .. id)
if #fields > 0 then
  return { "dead", fields, false }
end
return {}
