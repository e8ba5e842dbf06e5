-- finish: end a job once. A repeated end (two deliveries of one result) changes and counts
-- nothing. What only a running job needs goes: the kept result, and but for a dead job (which
-- an operator may retry) the message and the once-guard, so a finished job is a compact
-- summary. A dead job joins the dead letters.
-- KEYS[1] the job's hash
-- KEYS[2] active jobs: sorted set by deadline
-- KEYS[3] retry set
-- KEYS[4] finished jobs: sorted set by finish time
-- KEYS[5] counters: hash of outcomes
-- KEYS[6] dead letters: list
-- KEYS[7] the EQ score's once-guard
-- ARGV[1] job id
-- ARGV[2] now (epoch seconds)
-- ARGV[3] the counter to add one to (the outcome)
-- ARGV[4] '1' if the job goes to the dead letters
-- ARGV[5..] field, value pairs to write (its final state among them)
-- Returns 1 if this call ended the job, 0 if it had already ended.
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == DONE or state == REJECTED or state == DEAD then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('HDEL', KEYS[1], 'result', 'result_at', 'delivering_at')
if ARGV[4] ~= '1' then
  redis.call('HDEL', KEYS[1], 'message', 'last_error')
  redis.call('DEL', KEYS[7])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
if ARGV[4] == '1' then redis.call('LPUSH', KEYS[6], ARGV[1]) end
return 1
