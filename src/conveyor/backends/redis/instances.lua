-- Workflow instances with history, most recently started first, ties by correlation id descending.
--
-- ARGV: prefix, min (a ZREVRANGEBYSCORE bound: "-inf" or "(<started_after>"), limit, before score
-- ("+inf" for none), before id (kept: ids below it at that score; "" keeps none of them), id
-- prefix ("" for none), budget (members looked at by this call, at most).
-- Reply: {done (1: nothing older is left), last score, last id, then flat {correlation id,
-- started at, latest entry or ""}}. The caller calls again from (last score, last id) until done
-- or the page is full, so no call runs long however big the history. The index <prefix>:history
-- scores each instance by its oldest entry (its start); the latest entry is the list's last.
-- Members of one score come in reverse lexical order, which is ids descending.

local prefix, min, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local before_score, before_id, id_prefix, budget = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local key = prefix .. ":history"
local reply = {}
local found, visited, last_score, last_id, done = 0, 0, "", "", 0

local function take(member, score)
  visited = visited + 1
  last_score, last_id = score, member
  if id_prefix == "" or string.sub(member, 1, #id_prefix) == id_prefix then
    reply[#reply + 1] = member
    reply[#reply + 1] = score
    reply[#reply + 1] = redis.call("LINDEX", key .. ":" .. member, -1) or ""
    found = found + 1
  end
end

local max = before_score
if before_score ~= "+inf" then
  if before_id ~= "" then  -- the ties at the cursor's score first: those with a lower id
    local ties = redis.call("ZREVRANGEBYSCORE", key, before_score, before_score, "WITHSCORES")
    for i = 1, #ties, 2 do
      if found >= limit or visited >= budget then break end
      if ties[i] < before_id then take(ties[i], ties[i + 1]) end
    end
  end
  max = "(" .. before_score
end
local offset = 0
while found < limit and visited < budget do
  local batch = math.min(budget - visited, math.max(limit - found, 1) * 4)
  local rows = redis.call("ZREVRANGEBYSCORE", key, max, min, "WITHSCORES", "LIMIT", offset, batch)
  for i = 1, #rows, 2 do
    take(rows[i], rows[i + 1])
    if found >= limit then break end
  end
  offset = offset + #rows / 2
  if #rows < batch * 2 then
    if found < limit then done = 1 end
    break
  end
end
table.insert(reply, 1, last_id)
table.insert(reply, 1, last_score)
table.insert(reply, 1, done)
return reply
