-- record_failure: one more failure in a row, and a cooldown that doubles with each (the
-- server's circuit breaker).
-- KEYS[1] the server's breaker hash
-- ARGV[1] now (epoch seconds)
-- ARGV[2] base cooldown (seconds)
-- ARGV[3] longest cooldown (seconds)
-- ARGV[4] event channel
-- ARGV[5] server id
-- Returns the cooldown in seconds, as a string.
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local cooldown = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (failures - 1))
local ends = tonumber(ARGV[1]) + cooldown
redis.call('HSET', KEYS[1], 'until', string.format('%.3f', ends))
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('PUBLISH', ARGV[4], 'cool:' .. ARGV[5])
return tostring(cooldown)
