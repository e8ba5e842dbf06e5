-- begin_attempt: a worker begins an attempt only if it is still the ledger's current one, and
-- notes that it began: the sweep sends again an attempt that never began (its task lost).
-- KEYS[1] the job's hash
-- ARGV[1] the attempt
-- ARGV[2] now (epoch seconds)
-- Returns 1 if the attempt is current (now marked begun), 0 if it is stale.
local attempt, state = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state'))
if attempt ~= ARGV[1] or state ~= DISPATCHED then return 0 end
redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
return 1
