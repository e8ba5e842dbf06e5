-- record_latency: moving averages of a server's request time, generation speed and cold load
-- time for one model.
-- KEYS[1] the server's latency hash
-- ARGV[1] field of the request time (ms)
-- ARGV[2] field of the speed (tokens per second)
-- ARGV[3] this request's time (ms)
-- ARGV[4] this request's speed (0: not measured)
-- ARGV[5] weight of the new value (0..1)
-- ARGV[6] field of the cold load time (ms)
-- ARGV[7] this request's cold load time (0: the model was loaded)
-- Returns 1.
local alpha = tonumber(ARGV[5])
local function blend(field, value)
  local previous = redis.call('HGET', KEYS[1], field)
  if previous then value = (1 - alpha) * tonumber(previous) + alpha * value end
  redis.call('HSET', KEYS[1], field, tostring(value))
end
blend(ARGV[1], tonumber(ARGV[3]))
if tonumber(ARGV[4]) > 0 then blend(ARGV[2], tonumber(ARGV[4])) end
if tonumber(ARGV[7]) > 0 then blend(ARGV[6], tonumber(ARGV[7])) end
return 1
