-- keep_result: keep a generation's result on its job while the attempt is still current, so
-- that a control worker lost before delivering it does not lose it: the sweep delivers it
-- again.
-- KEYS[1] the job's hash
-- ARGV[1] the attempt
-- ARGV[2] the result (JSON)
-- ARGV[3] when it was finished (epoch seconds)
-- ARGV[4] the server that ran it: only the job's own server's result is kept
-- Returns 1 if kept, 0 if the attempt is stale or the result comes from another server.
local attempt, state, server = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state', 'server_id'))
if attempt ~= ARGV[1] or state ~= DISPATCHED or server ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'result', ARGV[2], 'result_at', ARGV[3])
return 1
