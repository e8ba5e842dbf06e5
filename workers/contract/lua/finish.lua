-- finish: end a job once. A repeated end (two deliveries of one result) changes and counts
-- nothing. What only a running job needs goes: the kept result, and but for a dead job (which
-- an operator may retry) the message, its deadline and priority. A finished job's hash is
-- written anew, so that Redis keeps the compact summary left in its compact encoding, and it
-- expires after the retention. A dead letter is kept whole for an operator (a retry) for the
-- dead-letter retention, a lost score (a dead score job) for the finished jobs' one; both are
-- indexed by when they ended and expire, so a fleet without a model does not fill Redis. A
-- done job's EQ once-guard lingers a while, for a delivery of the same result still on its
-- way; a dead one's keeps its time, for a retry.
-- KEYS[1] the job's hash
-- KEYS[2] active jobs: sorted set by deadline
-- KEYS[3] retry set
-- KEYS[4] finished jobs: a count
-- KEYS[5] counters: hash of outcomes
-- KEYS[6] dead letters: sorted set by when they died
-- KEYS[7] the EQ score's once-guard
-- KEYS[8] lost scores: sorted set by when they were lost
-- KEYS[9] metric counts: hash, `finished:{kind}:{outcome}` counted here
-- ARGV[1] job id
-- ARGV[2] now (epoch seconds)
-- ARGV[3] the counter to add one to (the outcome)
-- ARGV[4] what is kept: 'summary' (finished), 'letter' (a dead letter), 'lost' (a lost score)
-- ARGV[5] how long a finished job or a lost score is kept (ms)
-- ARGV[6] how long the once-guard lingers (ms)
-- ARGV[7] how long a dead letter is kept (ms)
-- ARGV[8..] field, value pairs to write (its final state among them)
-- Returns 1 if this call ended the job, 0 if it had already ended.
local state, kind = unpack(redis.call('HMGET', KEYS[1], 'state', 'kind'))
if not state or state == DONE or state == REJECTED or state == DEAD then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('HDEL', KEYS[1], 'result', 'result_at', 'delivering_at')
if ARGV[4] == 'summary' then
  local dropped = {
    message = true, last_error = true, deadline = true, priority = true,
  }
  local kept = {}
  local fields = redis.call('HGETALL', KEYS[1])
  for index = 1, #fields, 2 do
    if not dropped[fields[index]] then
      kept[#kept + 1] = fields[index]
      kept[#kept + 1] = fields[index + 1]
    end
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(kept))
end
local keep_ms = ARGV[4] == 'letter' and ARGV[7] or ARGV[5]
redis.call('PEXPIRE', KEYS[1], keep_ms)
if ARGV[4] == 'summary' then redis.call('PEXPIRE', KEYS[7], ARGV[6]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
redis.call('HINCRBY', KEYS[9], 'finished:' .. (kind or 'reply') .. ':' .. ARGV[3], 1)
if ARGV[4] ~= 'summary' then
  local index = ARGV[4] == 'letter' and KEYS[6] or KEYS[8]
  redis.call('ZADD', index, ARGV[2], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (tonumber(ARGV[2]) - keep_ms / 1000))
end
return 1
