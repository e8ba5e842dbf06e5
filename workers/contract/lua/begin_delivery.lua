-- begin_delivery: is this result the job's current attempt? Its slot is freed either way,
-- unless the job was sent to that same server again; a current one becomes DELIVERING.
-- A delivery that was interrupted may begin again: delivering is idempotent.
-- KEYS[1] the job's hash
-- KEYS[2] the result's server's in-flight hash
-- KEYS[3] the EQ score's once-guard
-- ARGV[1] job id
-- ARGV[2] the result's attempt
-- ARGV[3] the result's server
-- ARGV[4] event channel
-- ARGV[5] now (epoch seconds)
-- ARGV[6] the result (JSON): kept on a current job (its worker sends it here before it keeps
--         it, and may lose the race), so a delivery lost midway is made again from the ledger
-- Returns {0} for an unknown job; {1, fields} for a stale result; {2, fields, EQ guard value
-- or false} for the current one. The fields leave out the kept result: the delivery has it.
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return {0} end
local fields = {}
for index = 1, #all, 2 do
  if all[index] ~= 'result' then
    fields[#fields + 1] = all[index]
    fields[#fields + 1] = all[index + 1]
  end
end
local attempt, state, server = unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state', 'server_id'))
local current = attempt == ARGV[2] and server == ARGV[3]
  and (state == DISPATCHED or state == DELIVERING)
-- A stale result frees its slot only when the job holds none there any more.
if current or server ~= ARGV[3] or state ~= DISPATCHED then
  if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[4], 'free:' .. ARGV[3])
  end
end
if not current then return {1, fields} end
-- Each delivery (again) stamps its start, so the sweep leaves a delivery in progress alone.
redis.call('HSET', KEYS[1], 'state', DELIVERING, 'delivering_at', ARGV[5], 'result', ARGV[6])
return {2, fields, redis.call('GET', KEYS[3])}
