-- begin_attempt: a worker begins an attempt only if it is still the ledger's current one, on
-- the server the job is placed on, and notes that it began: the sweep sends again an attempt
-- that never began (its task lost). A copy of the task run by another server begins nothing.
-- KEYS[1] the job's hash
-- ARGV[1] the attempt
-- ARGV[2] now (epoch seconds)
-- ARGV[3] the worker's server id
-- Returns 1 if the attempt is current (now marked begun), 0 if it is stale or misplaced.
local attempt, state, server = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state', 'server_id'))
if attempt ~= ARGV[1] or state ~= DISPATCHED or server ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
return 1
