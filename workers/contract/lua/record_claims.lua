-- record_claims: write a just-claimed message's jobs, its reply's and (when it is scored) its
-- score's, and index them by their deadline, in one step; nothing at all if the ledger
-- already holds the reply's job.
-- KEYS[1] active jobs: sorted set by deadline
-- KEYS[2] the reply job's hash
-- KEYS[3] the score job's hash (any key when there is no score job)
-- KEYS[4] claim notes: hash
-- ARGV[1] deadline (epoch seconds)
-- ARGV[2] the reply job's id
-- ARGV[3] the score job's id ('' for none)
-- ARGV[4] the claim's note ('' for none): taken away, whatever else happens
-- ARGV[5] how many of the arguments after this one are the reply job's field, value pairs
-- ARGV[6..] the reply job's field, value pairs, then the score job's
-- Returns 1 if written, 0 if the reply's job already existed, 2 if the reply's job was written
-- but the score job's id was already another job's (the score is not scheduled).
if ARGV[4] ~= '' then redis.call('HDEL', KEYS[4], ARGV[4]) end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local reply_end = 5 + tonumber(ARGV[5])
redis.call('HSET', KEYS[2], unpack(ARGV, 6, reply_end))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then return 1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
redis.call('HSET', KEYS[3], unpack(ARGV, reply_end + 1))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
return 1
