-- take_retries: hand the retries due now to one bridge; each job is taken by exactly one.
-- KEYS[1] retry set: sorted set by due time
-- ARGV[1] now (epoch seconds)
-- ARGV[2] how many at most
-- ARGV[3] job key prefix (a job id follows)
-- ARGV[4] the bridge taking them
-- Returns each job taken, now WAITING with that bridge, as a flat list of its fields.
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'state') == RETRYING then
    redis.call('HSET', key, 'state', WAITING, 'bridge_id', ARGV[4])
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
