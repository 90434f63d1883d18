-- The leases held now (or expired and not yet taken again), by job id.
--
-- ARGV: prefix, limit, after ("" = from the first id), then the queues ("" alone = every queue
-- in <prefix>:worked, the queues jobs were ever leased from).
-- Reply: flat (id, queue, attempt, token, worker, leased_at, deadline, extensions) per lease.
-- A queue's leased sets (<queue>:leased[:<priority>]) hold only its leased jobs, few (the work in
-- flight): their ids are read whole and sorted, never the queue's waiting jobs.

local prefix, limit, after = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local queues = {}
if #ARGV == 4 and ARGV[4] == "" then
  queues = redis.call("SMEMBERS", prefix .. ":worked")
else
  for i = 4, #ARGV do
    queues[#queues + 1] = ARGV[i]
  end
end
local ids = {}
for _, queue in ipairs(queues) do
  local tag = prefix .. ":{" .. queue .. "}:"
  local sets = { tag .. "leased" }
  local control = redis.call("HGETALL", tag .. "control")
  for f = 1, #control, 2 do
    if tonumber(control[f]) then
      sets[#sets + 1] = tag .. "leased:" .. control[f]
    end
  end
  for _, key in ipairs(sets) do
    for _, id in ipairs(redis.call("ZRANGE", key, 0, -1)) do
      if id > after then
        ids[#ids + 1] = id
      end
    end
  end
end
table.sort(ids)
local page = {}
for n = 1, math.min(limit, #ids) do
  local id = ids[n]
  local job = redis.call("HMGET", prefix .. ":job:" .. id, "q", "a", "t", "w", "l", "d", "x")
  if job[1] and job[6] then
    page[#page + 1] = id
    for f = 1, 7 do
      page[#page + 1] = job[f] or ""
    end
  end
end
return page
