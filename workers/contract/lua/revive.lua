-- revive: place a dead letter (or a lost score) again: back among the active jobs with a new
-- deadline, out of the dead letters, no longer expiring, its failures so far forgiven, queued
-- for any bridge.
-- KEYS[1] the job's hash
-- KEYS[2] active jobs: sorted set by deadline
-- KEYS[3] dead letters
-- KEYS[4] retry set
-- KEYS[5] lost scores
-- ARGV[1] job id
-- ARGV[2] the new deadline (epoch seconds)
-- ARGV[3] now (epoch seconds)
-- ARGV[4] event channel
-- Returns 1 revived, 0 no such job, -1 the job is not dead, -2 an apology took its reply's
-- place (the site would refuse an answer).
local state, apology, attempts =
  unpack(redis.call('HMGET', KEYS[1], 'state', 'apology_posted', 'attempts'))
if not state then return 0 end
if state ~= DEAD then return -1 end
if apology == '1' then return -2 end
local forgiven = attempts and #cjson.decode(attempts) or 0
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('HDEL', KEYS[1], 'finished_at', 'outcome')
redis.call('HSET', KEYS[1], 'state', RETRYING, 'bridge_id', '', 'attempts_from', forgiven,
  'deadline', ARGV[2], 'reason', '')
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], 'retry:' .. ARGV[3])
return 1
