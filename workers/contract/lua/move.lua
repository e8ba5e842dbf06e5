-- move: take a job on from one of the states allowed, if its attempt, server and holding
-- bridge are still the ones expected. A job that leaves DISPATCHED gives its slot back.
-- Optionally it is queued for any bridge to place again.
-- KEYS[1] the job's hash
-- KEYS[2] retry set: sorted set by due time
-- ARGV[1] job id
-- ARGV[2] attempt expected ('' for any)
-- ARGV[3] states allowed, comma separated
-- ARGV[4] server expected ('' for any)
-- ARGV[5] holding bridge expected ('' for any)
-- ARGV[6] in-flight key prefix (a server id follows)
-- ARGV[7] event channel
-- ARGV[8] retry due time ('' for none)
-- ARGV[9..] field, value pairs to write (a 'state' among them is the job's new state)
-- Returns 1 if the job moved, 0 if it was not as expected.
local attempt, state, server, holder =
  unpack(redis.call('HMGET', KEYS[1], 'attempt', 'state', 'server_id', 'bridge_id'))
if not state then return 0 end
if ARGV[2] ~= '' and attempt ~= ARGV[2] then return 0 end
if not string.find(',' .. ARGV[3] .. ',', ',' .. state .. ',', 1, true) then return 0 end
if ARGV[4] ~= '' and server ~= ARGV[4] then return 0 end
if ARGV[5] ~= '' and holder ~= ARGV[5] then return 0 end
local next_state = state
for index = 9, #ARGV - 1, 2 do
  if ARGV[index] == 'state' then next_state = ARGV[index + 1] end
end
if state == DISPATCHED and next_state ~= DISPATCHED and server then
  if redis.call('HDEL', ARGV[6] .. server, ARGV[1]) == 1 then
    redis.call('PUBLISH', ARGV[7], 'free:' .. server)
  end
end
if #ARGV > 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
  redis.call('PUBLISH', ARGV[7], 'retry:' .. ARGV[8])
end
return 1
