-- reserve: take one of a server's slots for a job while the server has one free (a job that
-- already holds one keeps it), and in the same step record the job as dispatched there: a
-- slot is never taken for a job the ledger does not place on that server. With a bridge
-- given, only a job that bridge holds (CLAIMED or WAITING, by its id) may be placed.
-- KEYS[1] the server's in-flight set
-- KEYS[2] the job's hash
-- ARGV[1] the server's capacity
-- ARGV[2] job id
-- ARGV[3] the bridge placing it ('' for any)
-- ARGV[4..] field, value pairs of the dispatch
-- Returns 1 taken, 0 the server is full, -1 the job is no longer that bridge's to place.
if ARGV[3] ~= '' then
  local state, holder = unpack(redis.call('HMGET', KEYS[2], 'state', 'bridge_id'))
  if (state ~= CLAIMED and state ~= WAITING) or holder ~= ARGV[3] then return -1 end
end
local held = redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1
if not held and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
if not held then redis.call('SADD', KEYS[1], ARGV[2]) end
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
return 1
