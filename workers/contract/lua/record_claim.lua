-- record_claim: write a just-claimed message as a new job and index it by its deadline, in one
-- step; nothing at all if the ledger already holds it.
-- KEYS[1] the job's hash
-- KEYS[2] active jobs: sorted set by deadline
-- ARGV[1] job id
-- ARGV[2] deadline (epoch seconds)
-- ARGV[3..] field, value pairs of the new job
-- Returns 1 if written, 0 if the job already existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
