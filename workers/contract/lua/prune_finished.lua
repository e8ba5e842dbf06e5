-- prune_finished: forget finished jobs past their retention: their hashes and once-guards go;
-- a dead letter stays (only its place among the finished jobs goes).
-- KEYS[1] finished jobs: sorted set by finish time
-- ARGV[1] finished before this time (epoch seconds)
-- ARGV[2] how many at most
-- ARGV[3] job key prefix (a job id follows)
-- ARGV[4] EQ once-guard key prefix
-- Returns how many jobs left the finished set.
local old = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(old) do
  if redis.call('HGET', ARGV[3] .. id, 'state') ~= DEAD then
    redis.call('DEL', ARGV[3] .. id, ARGV[4] .. id)
  end
  redis.call('ZREM', KEYS[1], id)
end
return #old
