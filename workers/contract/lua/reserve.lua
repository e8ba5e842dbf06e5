-- reserve: take one of a server's slots for a job while the server has one free, and one of
-- its model's own slots when the model has its own (a job that already holds one keeps it),
-- and in the same step record the job as dispatched there: a slot is never taken for a job
-- the ledger does not place on that server. With a bridge given, only a job that bridge
-- holds (CLAIMED or WAITING, by its id) may be placed.
-- KEYS[1] the server's in-flight hash (job id: model)
-- KEYS[2] the job's hash
-- ARGV[1] the server's capacity
-- ARGV[2] job id
-- ARGV[3] the bridge placing it ('' for any)
-- ARGV[4] the job's model
-- ARGV[5] the model's own slots on the server (0: it has none of its own)
-- ARGV[6..] field, value pairs of the dispatch
-- Returns 1 taken, 0 the server (or the model's slots) full, -1 the job is no longer that
-- bridge's to place.
if ARGV[3] ~= '' then
  local state, holder = unpack(redis.call('HMGET', KEYS[2], 'state', 'bridge_id'))
  if (state ~= CLAIMED and state ~= WAITING) or holder ~= ARGV[3] then return -1 end
end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
  local model_slots = tonumber(ARGV[5])
  if model_slots > 0 then
    local busy = 0
    for _, model in ipairs(redis.call('HVALS', KEYS[1])) do
      if model == ARGV[4] then busy = busy + 1 end
    end
    if busy >= model_slots then return 0 end
  end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
end
if #ARGV > 5 then redis.call('HSET', KEYS[2], unpack(ARGV, 6)) end
return 1
