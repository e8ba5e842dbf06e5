-- hold_lock: hold a lock with a time to live: renew it if it is ours, take it if it is free.
-- KEYS[1] the lock
-- ARGV[1] this holder's token
-- ARGV[2] time to live (ms)
-- Returns 1 if held by this holder now, 0 if another holds it.
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
