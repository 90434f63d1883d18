-- Move a live lease's deadline to `until` (never earlier).
--
-- ARGV: prefix, job id, token, until, now.
-- Reply: 1 if extended, 0 if the token is stale or the lease expired.

local prefix, id, token, until_s = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = tonumber(ARGV[5])

local job_key = prefix .. ":job:" .. id
local job = redis.call("HMGET", job_key, "t", "d", "q")
if not job[2] or tonumber(job[1]) ~= token or tonumber(job[2]) < now then
  return 0
end
if tonumber(until_s) > tonumber(job[2]) then
  redis.call("HSET", job_key, "d", until_s)
  redis.call("ZADD", prefix .. ":{" .. job[3] .. "}:leased", until_s, id)
end
return 1
