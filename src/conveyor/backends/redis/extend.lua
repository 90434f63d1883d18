-- Move a live lease's deadline to `until` (never earlier), and count one extension.
--
-- ARGV: prefix, job id, token, until, now.
-- Reply: 1 if extended, 0 if the token is stale or the lease expired.

local prefix, id, token, until_s = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = tonumber(ARGV[5])

local job_key = prefix .. ":job:" .. id
local job = redis.call("HMGET", job_key, "t", "d", "q", "p", "x")
if not job[2] or tonumber(job[1]) ~= token or tonumber(job[2]) < now then
  return 0
end
local extensions = (tonumber(job[5]) or 0) + 1
if tonumber(until_s) > tonumber(job[2]) then
  redis.call("HSET", job_key, "d", until_s, "x", extensions)
  local lane = ""
  if job[4] and job[4] ~= "0" then
    lane = ":" .. job[4]
  end
  redis.call("ZADD", prefix .. ":{" .. job[3] .. "}:leased" .. lane, until_s, id)
else
  redis.call("HSET", job_key, "x", extensions)
end
return 1
