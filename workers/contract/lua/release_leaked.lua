-- release_leaked: free a server's slots held by jobs that no longer hold them (ended,
-- vanished, or moved to another server).
-- KEYS[1] the server's in-flight hash (job id: model)
-- ARGV[1] job key prefix (a job id follows)
-- ARGV[2] server id
-- ARGV[3] event channel
-- Returns the ids of the jobs whose slots were freed.
local out = {}
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  local state, server = unpack(redis.call('HMGET', ARGV[1] .. id, 'state', 'server_id'))
  if state ~= DISPATCHED or server ~= ARGV[2] then
    redis.call('HDEL', KEYS[1], id)
    out[#out + 1] = id
  end
end
if #out > 0 then redis.call('PUBLISH', ARGV[3], 'free:' .. ARGV[2]) end
return out
