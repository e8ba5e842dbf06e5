-- inflight_counts: the models of each listed server's jobs in flight, in one step.
-- ARGV[1] in-flight key prefix (a server id follows)
-- ARGV[2..] server ids
-- Returns, in the order of the ids, each server's list of models (one entry per job).
local out = {}
for index = 2, #ARGV do
  out[#out + 1] = redis.call('HVALS', ARGV[1] .. ARGV[index])
end
return out
