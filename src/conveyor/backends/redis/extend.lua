-- Move a live lease's deadline to `until` (never earlier).
--
-- ARGV: prefix, job id, token, until, now.
-- Reply: 1 if extended, 0 if the token is stale or the lease expired.

local prefix, id, token, until_s = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = tonumber(ARGV[5])

local job = redis.call("HMGET", prefix .. ":job:" .. id, "t", "q")
if not job[1] or tonumber(job[1]) ~= token then
  return 0
end
local leased = prefix .. ":{" .. job[2] .. "}:leased"
local deadline = redis.call("ZSCORE", leased, id)
if not deadline or tonumber(deadline) < now then
  return 0
end
if tonumber(until_s) > tonumber(deadline) then
  redis.call("ZADD", leased, until_s, id)
end
return 1
