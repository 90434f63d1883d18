-- Workflow instances with history, most recently started first.
--
-- ARGV: prefix, min (a ZRANGEBYSCORE bound: "-inf" or "(<started_after>"), limit.
-- Reply: flat {correlation id, started at, latest entry or "", ...}. The index <prefix>:history
-- scores each instance by its oldest entry (its start); the latest entry is the list's last.

local prefix, min, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local found = redis.call("ZREVRANGEBYSCORE", prefix .. ":history", "+inf", min, "WITHSCORES", "LIMIT", 0, limit)
local reply = {}
for i = 1, #found, 2 do
  reply[#reply + 1] = found[i]
  reply[#reply + 1] = found[i + 1]
  reply[#reply + 1] = redis.call("LINDEX", prefix .. ":history:" .. found[i], -1) or ""
end
return reply
