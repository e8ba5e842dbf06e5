-- inflight_counts: each listed server's in-flight count, in one step.
-- ARGV[1] in-flight key prefix (a server id follows)
-- ARGV[2..] server ids
-- Returns the counts, in the order of the ids.
local out = {}
for index = 2, #ARGV do
  out[#out + 1] = redis.call('SCARD', ARGV[1] .. ARGV[index])
end
return out
