-- Dead letters matching a filter, newest first (failed_at, then id, descending), or their count.
--
-- ARGV: prefix, mode ("find" or "count"), queue ("" = every queue), error type ("" = any, else
-- "=" .. type), text ("" = any, else "=" .. the text lowered), since ("" = none, else a number),
-- until ("" = none, else a number), before failed_at ("" = from the newest), before id, limit, budget.
-- Reply: { found, cursor }: found is a flat list of dead letters as dead_letters.lua gives them
-- (find) or a count (count); cursor is {failed_at, id} of the last dead letter looked at when the
-- walk stopped at `limit` matches or after `budget` dead letters, else {} (the end). The caller
-- calls again from the cursor: each call is bounded, so Redis is never blocked for long.
--
-- The walk is down the index by rank, <queue>:dead or <prefix>:dead (scored by failed_at, ties in
-- id order), starting past `until` and `before` (a ZCOUNT each), stopping at `since`; the error
-- type and text are tested per dead letter, reading its hash's q, et and em.

local prefix, mode, queue = ARGV[1], ARGV[2], ARGV[3]
local error_type, text = ARGV[4], ARGV[5]
local since, until_s = tonumber(ARGV[6]) or -math.huge, ARGV[7]
local before_at, before_id = ARGV[8], ARGV[9]
local limit, budget = tonumber(ARGV[10]), tonumber(ARGV[11])
local index = prefix .. ":dead"
if queue ~= "" then
  index = prefix .. ":{" .. queue .. "}:dead"
end
if error_type ~= "" then
  error_type = string.sub(error_type, 2)
end
if text ~= "" then
  text = string.sub(text, 2)
end
local suffix = "." .. error_type

local start = 0
if until_s ~= "" then
  start = redis.call("ZCOUNT", index, until_s, "+inf")
end
local before = nil
if before_at ~= "" then
  before = tonumber(before_at)
  start = math.max(start, redis.call("ZCOUNT", index, "(" .. before_at, "+inf"))
end

local function matches(id)
  local dead = redis.call("HMGET", prefix .. ":dead:" .. id, "q", "et", "em")
  if not dead[1] or (queue ~= "" and dead[1] ~= queue) then
    return false
  end
  if error_type ~= "" then
    local kind = dead[2] or ""
    if kind ~= error_type and string.sub(kind, -#suffix) ~= suffix then
      return false
    end
  end
  return text == "" or string.find(string.lower(dead[3] or ""), text, 1, true) ~= nil
end

local found, count, looked = {}, 0, 0
local function reply(cursor)
  if mode == "count" then
    return { count, cursor }
  end
  return { found, cursor }
end
local CHUNK = 200
local rank = start
while looked < budget do
  local chunk = redis.call("ZREVRANGE", index, rank, rank + CHUNK - 1, "WITHSCORES")
  if #chunk == 0 then
    return reply({})
  end
  rank = rank + CHUNK
  for m = 1, #chunk, 2 do
    local id, score = chunk[m], tonumber(chunk[m + 1])
    if score < since then
      return reply({})
    end
    -- (ties with `before`'s failed_at come in id order, descending: skip those not before it)
    if not (before and score == before and id >= before_id) then
      looked = looked + 1
      if matches(id) then
        count = count + 1
        if mode == "find" then
          local dead = redis.call("HMGET", prefix .. ":dead:" .. id, "q", "b", "et", "em", "tb", "a", "e", "f")
          found[#found + 1] = id
          for f = 1, 8 do
            found[#found + 1] = dead[f]
          end
        end
        if count >= limit then
          return reply({ chunk[m + 1], id })
        end
      end
      if looked >= budget then
        return reply({ chunk[m + 1], id })
      end
    end
  end
end
return reply({})
