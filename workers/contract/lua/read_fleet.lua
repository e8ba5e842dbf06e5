-- read_fleet: Redis's clock, then every known server's record with its jobs in flight,
-- measured speeds and breaker, in one round trip whatever the fleet's size. Heartbeats are
-- stamped with Redis's clock too, so a Mac whose clock is off is not taken for silent.
-- KEYS[1] known servers: set of ids
-- ARGV[1] server record key prefix (a server id follows)
-- ARGV[2] in-flight key prefix
-- ARGV[3] latency key prefix
-- ARGV[4] breaker key prefix
-- Returns {now, then for each server: id, record fields, its jobs' models, latency fields,
-- breaker fields}.
local now = redis.call('TIME')
local out = {now[1] .. '.' .. string.format('%06d', now[2])}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. id)
  out[#out + 1] = redis.call('HVALS', ARGV[2] .. id)
  out[#out + 1] = redis.call('HGETALL', ARGV[3] .. id)
  out[#out + 1] = redis.call('HGETALL', ARGV[4] .. id)
end
return out
